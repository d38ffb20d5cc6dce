//! Derivations (`.drv` files): the data type, a push-based parser, the
//! byte-exact printer, `hashDerivationModulo`, and the output paths the
//! daemon checks when a `.drv` becomes valid (spec 02 §4 and §6).
//!
//! The text format is ATerm-like and has no whitespace:
//!
//! ```text
//! Derive([("out","/gnu/store/…-x","",""),…],[("/gnu/store/…-y.drv",["out"]),…],
//!        ["/gnu/store/…-src",…],"x86_64-linux","/gnu/store/…/bin/sh",["arg",…],
//!        [("name","value"),…])
//! ```
//!
//! Keeps true:
//! - maps and sets are `BTreeMap`/`BTreeSet` of `String`, whose order is
//!   bytewise, the order of the daemon's `std::map<string>`; so printing a
//!   [`Derivation`] sorts exactly as the daemon's `unparseDerivation` does;
//! - the printer reproduces the daemon's bytes exactly, including its one
//!   quirk: each string is written up to its first NUL byte only, because
//!   the daemon prints strings as C strings. Printing never fails, and its
//!   output always parses back to the same text;
//! - the parser accepts what the daemon's `parseDerivation` accepts, with
//!   its error texts, except for strings that are not UTF-8 (see
//!   [`DrvParser`] for the exact language and the differences);
//! - nothing here reads a file: `hashDerivationModulo` of an input
//!   derivation comes from a closure the caller supplies, so the daemon can
//!   memoise it and read input `.drv` files through effects.

mod parser;

pub use parser::{DrvFeed, DrvLimits, DrvParseError, DrvParser, parse_derivation};

use crate::hash::{Hash, HashAlgo, HashParseError, Hasher};
use crate::store_path::{StoreDir, StorePath, StorePathError};
use std::collections::{BTreeMap, BTreeSet};

/// The extension of derivation files in the store.
pub const DRV_EXTENSION: &str = ".drv";

/// A derivation, as read from or written to a `.drv` file.
///
/// Fields are public: this is plain data. Paths are strings, not
/// [`StorePath`]s, because the daemon only requires them to start with `/`
/// when parsing (the parser guarantees that much; a derivation built in
/// code may hold anything).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Derivation {
    /// Output id (`out`, `lib`, ...) to its path and expected hash.
    pub outputs: BTreeMap<String, DerivationOutput>,
    /// Input derivation path to the names of the outputs used.
    pub input_drvs: BTreeMap<String, BTreeSet<String>>,
    /// Input store paths that are not derivation outputs.
    pub input_srcs: BTreeSet<String>,
    /// The system type, e.g. `x86_64-linux`.
    pub platform: String,
    /// The program to run.
    pub builder: String,
    /// The builder's arguments, in order.
    pub args: Vec<String>,
    /// The builder's environment, by variable name.
    pub env: BTreeMap<String, String>,
}

/// One output of a derivation.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct DerivationOutput {
    /// The output's store path (empty in a masked derivation).
    pub path: String,
    /// Empty for a regular output; `ALGO` or `r:ALGO` for a fixed output.
    pub hash_algo: String,
    /// Base16 of the expected hash for a fixed output; empty otherwise.
    pub hash: String,
}

/// The content hash a fixed output must have, from its `hash_algo` and
/// `hash` strings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FixedOutputHash {
    /// `r:` prefix: the hash is of the NAR serialisation, not of a flat file.
    pub recursive: bool,
    pub hash: Hash,
}

/// A fixed output's hash strings that the daemon would refuse, with its
/// texts.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HashInfoError {
    /// The algorithm name (after any `r:`) is not one the daemon knows.
    #[error("unknown hash algorithm `{0}'")]
    UnknownAlgo(String),
    /// The hash is not base16 of the algorithm's size.
    #[error(transparent)]
    Hash(#[from] HashParseError),
}

/// Why a derivation's output paths are not the ones the daemon computes,
/// or could not be computed. `E` is the error of the caller's lookup of
/// input derivations' modulo hashes.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OutputError<E> {
    /// An output's path, or the environment variable named after it, is
    /// not the computed path. `found` is the path written in the output.
    #[error("derivation `{drv}' has incorrect output `{found}', should be `{expected}'")]
    Incorrect {
        drv: String,
        found: String,
        expected: String,
    },
    /// A fixed output's hash strings do not parse.
    #[error(transparent)]
    HashInfo(#[from] HashInfoError),
    /// The derivation's name (or name plus output id) cannot be a store
    /// name.
    #[error(transparent)]
    Name(#[from] StorePathError),
    /// The path given as the derivation's own does not end in `.drv`; the
    /// caller should never ask (the daemon asserts it).
    #[error("path `{0}' is not a derivation")]
    NotADerivation(String),
    /// The caller's lookup of an input derivation's modulo hash failed.
    #[error(transparent)]
    Input(E),
}

impl Derivation {
    /// The canonical text of the derivation, exactly as the daemon's
    /// `unparseDerivation` writes it (no trailing newline). Strings are cut
    /// at their first NUL byte, as the daemon's printer does.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        self.print(
            &mut out,
            self.input_drvs.iter().map(|(k, v)| (k.as_str(), v)),
        );
        out
    }

    /// `isFixedOutputDrv`: exactly one output, named `out`, with a
    /// non-empty expected hash.
    pub fn is_fixed_output(&self) -> bool {
        self.fixed_output().is_some()
    }

    /// The store paths a `.drv` file of this derivation refers to: its
    /// input sources and input derivations (its outputs are *not*
    /// references). These are the references of add-text-to-store.
    pub fn references(&self) -> BTreeSet<&str> {
        self.input_srcs
            .iter()
            .chain(self.input_drvs.keys())
            .map(String::as_str)
            .collect()
    }

    /// A copy with every output path blanked and, for every output id, the
    /// environment variable of that name set to the empty string (added if
    /// absent). This is the daemon's masking when it checks output paths.
    pub fn with_blank_outputs(&self) -> Derivation {
        let mut copy = self.clone();
        for (id, out) in &mut copy.outputs {
            out.path.clear();
            copy.env.insert(id.clone(), String::new());
        }
        copy
    }

    /// `hashDerivationModulo`: for a fixed-output derivation, SHA-256 of
    /// `fixed:out:ALGO:HASH:PATH` (the strings as written); otherwise
    /// SHA-256 of the text with every input derivation path replaced by
    /// base16 of that input's own modulo hash, which `input_hash` supplies
    /// (the daemon memoises it and computes it from the input `.drv` as
    /// stored). Replaced keys are re-sorted; two inputs with the same hash
    /// collapse into one entry holding the later input's output names, as
    /// in the daemon's map.
    pub fn hash_modulo<E>(
        &self,
        mut input_hash: impl FnMut(&str) -> Result<Hash, E>,
    ) -> Result<Hash, E> {
        if let Some((_, out)) = self.fixed_output() {
            let mut h = Hasher::new(HashAlgo::Sha256);
            for part in ["fixed:out:", &out.hash_algo, ":", &out.hash, ":", &out.path] {
                h.update(part.as_bytes());
            }
            return Ok(h.finish());
        }
        let mut inputs: BTreeMap<String, &BTreeSet<String>> = BTreeMap::new();
        for (path, names) in &self.input_drvs {
            inputs.insert(input_hash(path)?.to_hex(), names);
        }
        let mut h = HashSink(Hasher::new(HashAlgo::Sha256));
        self.print(&mut h, inputs.iter().map(|(k, v)| (k.as_str(), *v)));
        Ok(h.0.finish())
    }

    /// The output paths the daemon computes for this derivation when its
    /// `.drv` is named `drv_name.drv` (spec 02 §6.3): for a fixed-output
    /// derivation the fixed-output path of its hash; otherwise, for each
    /// output id, the output path of the modulo hash of
    /// [`with_blank_outputs`](Self::with_blank_outputs).
    pub fn output_paths<E>(
        &self,
        store: &StoreDir,
        drv_name: &str,
        input_hash: impl FnMut(&str) -> Result<Hash, E>,
    ) -> Result<BTreeMap<String, StorePath>, OutputError<E>> {
        let mut paths = BTreeMap::new();
        self.each_expected_output(store, drv_name, input_hash, |id, _, expected| {
            paths.insert(id.to_owned(), expected);
            Ok(())
        })?;
        Ok(paths)
    }

    /// `checkDerivationOutputs`: every output's path, and the environment
    /// variable named after its id, must be the computed path. Outputs are
    /// checked in order and the first failure is returned, with the
    /// daemon's text. `drv_path` is the `.drv`'s own store path.
    pub fn check_outputs<E>(
        &self,
        store: &StoreDir,
        drv_path: &StorePath,
        input_hash: impl FnMut(&str) -> Result<Hash, E>,
    ) -> Result<(), OutputError<E>> {
        let drv_name = drv_path
            .name()
            .strip_suffix(DRV_EXTENSION)
            .ok_or_else(|| OutputError::NotADerivation(drv_path.as_str().to_owned()))?;
        self.each_expected_output(store, drv_name, input_hash, |id, out, expected| {
            let env_ok = self.env.get(id).is_some_and(|v| *v == expected.as_str());
            if out.path == expected.as_str() && env_ok {
                Ok(())
            } else {
                Err(OutputError::Incorrect {
                    drv: drv_path.as_str().to_owned(),
                    found: out.path.clone(),
                    expected: expected.into_string(),
                })
            }
        })
    }

    /// The single output `out` when this is a fixed-output derivation.
    fn fixed_output(&self) -> Option<(&str, &DerivationOutput)> {
        let mut outputs = self.outputs.iter();
        match (outputs.next(), outputs.next()) {
            (Some((id, out)), None) if id == "out" && !out.hash.is_empty() => Some((id, out)),
            _ => None,
        }
    }

    /// Computes each output's expected path in output order, handing each
    /// to `visit` before computing the next, so that errors come in the
    /// daemon's order.
    fn each_expected_output<E>(
        &self,
        store: &StoreDir,
        drv_name: &str,
        input_hash: impl FnMut(&str) -> Result<Hash, E>,
        mut visit: impl FnMut(&str, &DerivationOutput, StorePath) -> Result<(), OutputError<E>>,
    ) -> Result<(), OutputError<E>> {
        if let Some((id, out)) = self.fixed_output() {
            let info = out.parse_hash_info()?;
            let expected = store.make_fixed_output_path(info.recursive, &info.hash, drv_name)?;
            return visit(id, out, expected);
        }
        let h = self
            .with_blank_outputs()
            .hash_modulo(input_hash)
            .map_err(OutputError::Input)?;
        for (id, out) in &self.outputs {
            let expected = store.make_output_path(id, &h, drv_name)?;
            visit(id, out, expected)?;
        }
        Ok(())
    }

    /// The printer, over any sink, with the input derivations given apart
    /// so that `hash_modulo` can substitute them without a copy.
    fn print<'a>(
        &self,
        out: &mut impl Sink,
        input_drvs: impl Iterator<Item = (&'a str, &'a BTreeSet<String>)>,
    ) {
        out.put("Derive([");
        for (i, (id, o)) in self.outputs.iter().enumerate() {
            if i > 0 {
                out.put(",");
            }
            out.put("(");
            print_string(out, id);
            for s in [&o.path, &o.hash_algo, &o.hash] {
                out.put(",");
                print_string(out, s);
            }
            out.put(")");
        }
        out.put("],[");
        for (i, (path, names)) in input_drvs.enumerate() {
            if i > 0 {
                out.put(",");
            }
            out.put("(");
            print_string(out, path);
            out.put(",");
            print_strings(out, names.iter());
            out.put(")");
        }
        out.put("],");
        print_strings(out, self.input_srcs.iter());
        out.put(",");
        print_string(out, &self.platform);
        out.put(",");
        print_string(out, &self.builder);
        out.put(",");
        print_strings(out, self.args.iter());
        out.put(",[");
        for (i, (name, value)) in self.env.iter().enumerate() {
            if i > 0 {
                out.put(",");
            }
            out.put("(");
            print_string(out, name);
            out.put(",");
            print_string(out, value);
            out.put(")");
        }
        out.put("])");
    }
}

impl DerivationOutput {
    /// `parseHashInfo`: the recursive flag (`r:` prefix of `hash_algo`),
    /// the algorithm by name and the base16 hash.
    pub fn parse_hash_info(&self) -> Result<FixedOutputHash, HashInfoError> {
        let (recursive, algo) = match self.hash_algo.strip_prefix("r:") {
            Some(rest) => (true, rest),
            None => (false, self.hash_algo.as_str()),
        };
        let algo =
            HashAlgo::parse(algo).ok_or_else(|| HashInfoError::UnknownAlgo(algo.to_owned()))?;
        let hash = Hash::parse_hex(algo, &self.hash)?;
        Ok(FixedOutputHash { recursive, hash })
    }
}

/// Where the printer's text goes: a string, or straight into a hasher.
trait Sink {
    fn put(&mut self, s: &str);
}

impl Sink for String {
    fn put(&mut self, s: &str) {
        self.push_str(s);
    }
}

struct HashSink(Hasher);

impl Sink for HashSink {
    fn put(&mut self, s: &str) {
        self.0.update(s.as_bytes());
    }
}

/// Writes `s` quoted and escaped, up to its first NUL. Unescaped runs are
/// written whole; every split point is at an ASCII byte, hence a character
/// boundary.
fn print_string(out: &mut impl Sink, s: &str) {
    let s = match s.find('\0') {
        Some(nul) => &s[..nul],
        None => s,
    };
    out.put("\"");
    let mut run_start = 0;
    for (i, b) in s.bytes().enumerate() {
        let escaped = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            _ => continue,
        };
        out.put(&s[run_start..i]);
        out.put(escaped);
        run_start = i + 1;
    }
    out.put(&s[run_start..]);
    out.put("\"");
}

fn print_strings<'a>(out: &mut impl Sink, items: impl Iterator<Item = &'a String>) {
    out.put("[");
    for (i, s) in items.enumerate() {
        if i > 0 {
            out.put(",");
        }
        print_string(out, s);
    }
    out.put("]");
}

#[cfg(test)]
mod tests;

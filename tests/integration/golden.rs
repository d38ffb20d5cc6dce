//! Golden vectors from the real Guix 1.5.0 client and C++ daemon
//! (`tests/golden/*.json`, described in `tests/golden/README.md`),
//! reproduced by guixd-core, one test per file.
//!
//! Keeps true: every vector of every file is checked, none is sampled; a
//! failure names the file, the vector and the value that disagrees, and a
//! run lists every disagreement of a file at once. A vector the core is
//! known to get wrong is checked by its own `#[ignore]`d test, so the
//! rest stays green and the failure stays visible.

mod captures;
mod conversation;
mod derivations;
mod encodings;
mod errors;
mod nars;
mod store_paths;
mod support;

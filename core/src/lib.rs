//! guixd-core: the pure heart of guixd.
//!
//! This crate holds the store's formats (nix-base32, hashes, store paths,
//! NAR, derivations, the worker protocol's codec) and, as the daemon grows,
//! the machines that decide what happens and when. It performs no I/O at
//! all: it never reads a clock, the environment, the filesystem or an OS
//! random source, and never spawns a thread or a process. `core/clippy.toml`
//! turns those absences into lints. Every parser here is push-based: feed any
//! chunk, get "need more" or a value, and any split of the same bytes gives
//! the same result.

pub mod base32;
pub mod build_plan;
pub mod config;
pub mod daemon;
pub mod effect;
pub mod gc;
pub mod hash;
pub mod hex;
pub mod locks;
pub mod settings;
pub mod store_path;

pub use hash::{Hash, HashAlgo, Hasher};
pub use store_path::{StoreDir, StorePath};

pub mod derivation;
pub mod export;
pub mod nar;
pub mod wire;

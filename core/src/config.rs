//! Configuration shared by the core and the os layer: where things are, who
//! the daemon is, and the bounds on everything.
//!
//! Keeps true: this is plain data, filled once at start-up by the binary
//! (from the command line and the environment, as `guix-daemon` does) and
//! never read from the machine by the core itself.

use crate::nar::NarLimits;
use crate::settings::Settings;
use crate::store_path::StoreDir;
use crate::wire::WireLimits;
use std::path::PathBuf;

/// The directories of a store, after the environment was applied
/// (spec 02 §1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dirs {
    /// `NIX_STORE_DIR`, default `/gnu/store`.
    pub store: StoreDir,
    /// `GUIX_STATE_DIRECTORY`, default `/var/guix`.
    pub state: PathBuf,
    /// `GUIX_LOG_DIRECTORY`, default `/var/log/guix`.
    pub log: PathBuf,
    /// `GUIX_DATABASE_DIRECTORY`, default `<state>/db`.
    pub db: PathBuf,
    /// `GUIX_CONFIGURATION_DIRECTORY`, default `/etc/guix`.
    pub conf: PathBuf,
    /// The `guix` program used for helpers (`GUIX`, else `<bindir>/guix`).
    pub guix_program: PathBuf,
}

/// Bounds on everything the core holds. Every buffer, queue and table has a
/// ceiling here, so the simulator can vary them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once; beyond this, new ones are closed at once.
    pub connections_max: usize,
    /// Bytes of unparsed client input held per connection.
    pub input_buffer_bytes: usize,
    /// Bytes of reply not yet written to the socket, per connection, beyond
    /// which the session stops producing (export, logs) until it drains.
    pub output_buffer_bytes: usize,
    /// Bytes of an upload handed to the os layer in one chunk.
    pub upload_chunk_bytes: usize,
    /// Effects in flight at once, across the daemon.
    pub effects_in_flight_max: usize,
    /// Registration groups committed in one transaction.
    pub registration_batch_max: usize,
    /// Lock files held open at once.
    pub lock_files_max: usize,
    /// Largest `.drv` file the daemon will read.
    pub drv_file_max_bytes: u64,
    /// Largest text the daemon accepts in add-text-to-store.
    pub text_max_bytes: u64,
    /// Derivations memoised for `hashDerivationModulo`.
    pub drv_hash_cache_entries: usize,
    /// Bounds on requests and replies of the worker protocol.
    pub wire: WireLimits,
    /// Bounds on NARs received from clients.
    pub nar: NarLimits,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            connections_max: 16_384,
            input_buffer_bytes: 1 << 20,
            output_buffer_bytes: 1 << 20,
            upload_chunk_bytes: 1 << 20,
            effects_in_flight_max: 4096,
            registration_batch_max: 256,
            lock_files_max: 4096,
            drv_file_max_bytes: 64 << 20,
            text_max_bytes: 256 << 20,
            drv_hash_cache_entries: 4096,
            wire: WireLimits::default(),
            nar: NarLimits::default(),
        }
    }
}

/// Everything the core is configured with.
#[derive(Clone, Debug)]
pub struct Config {
    pub dirs: Dirs,
    /// The daemon's own uid: clients with this uid (or 0) are trusted.
    pub daemon_uid: u32,
    pub settings: Settings,
    pub limits: Limits,
    /// Seed for every random choice the core makes.
    pub seed: u64,
    /// The initial verbosity of sessions (`--debug` makes it 4).
    pub verbosity: u32,
}

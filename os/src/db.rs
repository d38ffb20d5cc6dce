//! The store database (`<db>/db.sqlite`), the source of truth for which
//! store items are valid, what they refer to, and which derivation built
//! them (spec 02 §7).
//!
//! Guix's own tools (`register-items`, `restore-file-set`, `guix system
//! init`) and possibly a C++ `guix-daemon` write the same file while we run,
//! so nothing read here is cached between effects, the schema and the text
//! of every column are exactly the C++ daemon's, and every write tolerates
//! an outside writer holding the database for a while.
//!
//! Keeps true:
//! - all of this process's writes go through one connection behind a mutex
//!   (the writer), and the core asks for one write at a time, so the daemon
//!   never contends with itself; a registration batch is one `BEGIN
//!   IMMEDIATE` transaction in which every group sits inside its own
//!   savepoint, so a failing group is undone alone and the others commit;
//! - reads use a small pool of read-only connections; in WAL mode (the
//!   default) readers never block the writer, nor it them; a point read
//!   for an event-loop thread ([`Db::read_now`]) never waits at all: no
//!   idle connection or a busy database and it gives up at once;
//! - `SQLITE_BUSY` and friends, which only outside writers can cause, make
//!   the whole transaction (or query) start again after a randomised,
//!   exponentially growing pause, for a bounded total time; clients never
//!   see a "database is busy" warning, only an error once the budget is
//!   spent;
//! - the text stored is the daemon's: hashes as `sha256:<hex>`, no deriver
//!   as NULL (never ""), an unknown NAR size as NULL.

use crate::OsConfig;
use crate::gc::Invalidation;
use crate::setup::SetupError;
use guixd_core::effect::{
    Effect, EffectError, EffectErrorKind, EffectOutput, EffectResult, RegistrationGroup,
    ValidPathInfo,
};
use guixd_core::gc::{GcRows, PathRow};
use guixd_core::hash::{Hash, HashAlgo};
use guixd_core::store_path::{HASH_PART_LEN, StoreDir, StorePath};
use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, params};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The schema version this daemon speaks, written to `<db>/schema`. Guix
/// has only ever used version 7.
pub const SCHEMA_VERSION: i64 = 7;

/// The schema of a new database. Every `create` statement is byte for byte
/// the one in Guix's `guix/store/schema.sql`, because SQLite keeps each
/// statement's text in `sqlite_master` and a database we create must look
/// the same to Guix's tools (and to a differential comparison) as one the
/// C++ daemon created. All statements say `if not exists`, so running this
/// on a database that Guile code already initialised is harmless.
///
/// The trigger exists because an item may refer to itself: the row
/// `(N, N)` in `Refs` would make deleting item N violate the `on delete
/// restrict` of the `reference` column, so self-references go first.
pub const SCHEMA_SQL: &str = "create table if not exists ValidPaths (
    id               integer primary key autoincrement not null,
    path             text unique not null,
    hash             text not null,
    registrationTime integer not null,
    deriver          text,
    narSize          integer
);

create table if not exists Refs (
    referrer  integer not null,
    reference integer not null,
    primary key (referrer, reference),
    foreign key (referrer) references ValidPaths(id) on delete cascade,
    foreign key (reference) references ValidPaths(id) on delete restrict
);

create index if not exists IndexReferrer on Refs(referrer);
create index if not exists IndexReference on Refs(reference);

create trigger if not exists DeleteSelfRefs before delete on ValidPaths
  begin
    delete from Refs where referrer = old.id and reference = old.id;
  end;

create table if not exists DerivationOutputs (
    drv  integer not null,
    id   text not null, -- symbolic output id, usually \"out\"
    path text not null,
    primary key (drv, id),
    foreign key (drv) references ValidPaths(id) on delete cascade
);

create index if not exists IndexDerivationOutputs on DerivationOutputs(path);

create table if not exists FailedPaths (
    path text primary key not null,
    time integer not null
);
";

/// Bounds on the database layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DbLimits {
    /// Read-only connections open at once; a reader beyond this waits for
    /// one to be handed back.
    pub readers_max: usize,
    /// How long one effect keeps retrying while an outside writer holds the
    /// database, in total, before it fails with [`EffectErrorKind::Database`].
    /// Guile's writers wait 30 s in SQLite's own busy handler per attempt;
    /// this is of the same order.
    pub busy_budget_ms: u64,
    /// The first pause before a retry; each further pause doubles, up to
    /// `busy_pause_max_ms`, and is randomised to between half and all of it.
    pub busy_pause_first_ms: u64,
    pub busy_pause_max_ms: u64,
    /// SQLite's own busy wait inside one attempt, for every connection.
    /// Short, because the retry loop above does the real waiting.
    pub busy_timeout_ms: u64,
    /// Prepared statements cached per connection.
    pub statement_cache_entries: usize,
}

impl Default for DbLimits {
    fn default() -> DbLimits {
        DbLimits {
            readers_max: 8,
            busy_budget_ms: 30_000,
            busy_pause_first_ms: 2,
            busy_pause_max_ms: 250,
            busy_timeout_ms: 100,
            statement_cache_entries: 32,
        }
    }
}

/// How connections are set up, from the daemon's settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionOptions {
    /// `synchronous = normal` when set, `off` otherwise (`fsync-metadata`).
    pub fsync_metadata: bool,
    /// `journal_mode = wal` when set, `truncate` otherwise
    /// (`use-sqlite-wal`).
    pub use_wal: bool,
}

impl ConnectionOptions {
    pub fn from_config(config: &OsConfig) -> ConnectionOptions {
        ConnectionOptions {
            fsync_metadata: config.settings.fsync_metadata,
            use_wal: config.settings.use_sqlite_wal,
        }
    }
}

/// The open store database: one writer, a pool of readers.
pub struct Db {
    store_dir: StoreDir,
    limits: DbLimits,
    sync_before_registering: bool,
    file: PathBuf,
    writer: Mutex<Connection>,
    readers: Mutex<ReaderPool>,
    reader_returned: Condvar,
}

impl Db {
    /// Opens the database of a store that [`crate::setup::prepare_store`]
    /// already prepared (directories, schema, big lock).
    pub fn open(config: &OsConfig) -> Result<Db, SetupError> {
        Db::open_with_limits(config, DbLimits::default())
    }

    /// [`Db::open`] with explicit bounds.
    pub fn open_with_limits(config: &OsConfig, limits: DbLimits) -> Result<Db, SetupError> {
        let options = ConnectionOptions::from_config(config);
        check_db_dir_writable(&config.dirs.db)?;
        let file = db_file(&config.dirs.db);
        let writer = open_writer(&file, false, options, &limits)?;
        // guixd's index and table; a database that refuses them (read-only,
        // say) only loses fixed-output reuse.
        let _ = writer.execute_batch(GUIXD_SCHEMA_SQL);
        Ok(Db {
            store_dir: config.dirs.store.clone(),
            limits,
            sync_before_registering: config.settings.sync_before_registering,
            file,
            writer: Mutex::new(writer),
            readers: Mutex::new(ReaderPool {
                idle: Vec::new(),
                open: 0,
            }),
            reader_returned: Condvar::new(),
        })
    }

    /// The database file.
    pub fn file(&self) -> &Path {
        &self.file
    }

    // ---- reads

    /// The answer to a point read (`Effect::is_point_read`) if it can be
    /// had without waiting: `None` when no reader connection is idle, the
    /// database is busy, or `effect` is no point read. For a runtime's
    /// event-loop thread, which must never wait.
    pub fn read_now(&self, effect: &Effect) -> Option<EffectResult> {
        let wait = ReadWait::MustNot;
        match effect {
            Effect::QueryPathInfo { path } => self.path_info(wait, path),
            Effect::QueryValidPaths { paths } if effect.is_point_read() => {
                self.valid_paths(wait, paths)
            }
            Effect::QueryDerivationOutputs { drv } => self.derivation_outputs(wait, drv),
            Effect::QueryPathFromHashPart { hash_part } => {
                self.path_from_hash_part(wait, hash_part)
            }
            _ => None,
        }
    }

    /// `PathInfo(Some(info))` for a valid path, `PathInfo(None)` otherwise.
    pub fn query_path_info(&self, path: &StorePath) -> EffectResult {
        answered(self.path_info(ReadWait::May, path))
    }

    fn path_info(&self, wait: ReadWait, path: &StorePath) -> Option<EffectResult> {
        self.read_as(wait, |conn| {
            let tx = conn.transaction()?;
            let info = path_info(&tx, &self.store_dir, path)?;
            tx.commit()?;
            Ok(EffectOutput::PathInfo(info))
        })
    }

    /// `Paths`: the subset of `paths` that is valid.
    pub fn query_valid_paths(&self, paths: &[StorePath]) -> EffectResult {
        answered(self.valid_paths(ReadWait::May, paths))
    }

    fn valid_paths(&self, wait: ReadWait, paths: &[StorePath]) -> Option<EffectResult> {
        self.read_as(wait, |conn| {
            let tx = conn.transaction()?;
            let mut valid = BTreeSet::new();
            for path in paths {
                if path_id(&tx, path.as_str())?.is_some() {
                    valid.insert(path.clone());
                }
            }
            tx.commit()?;
            Ok(EffectOutput::Paths(valid))
        })
    }

    /// `Paths`: the valid paths that refer to `path`.
    pub fn query_referrers(&self, path: &StorePath) -> EffectResult {
        self.read(|conn| {
            let paths = select_paths(conn, &self.store_dir, SQL_QUERY_REFERRERS, path.as_str())?;
            Ok(EffectOutput::Paths(paths))
        })
    }

    /// `Paths`: the valid derivations that have `path` among their outputs.
    pub fn query_valid_derivers(&self, path: &StorePath) -> EffectResult {
        self.read(|conn| {
            let paths = select_paths(
                conn,
                &self.store_dir,
                SQL_QUERY_VALID_DERIVERS,
                path.as_str(),
            )?;
            Ok(EffectOutput::Paths(paths))
        })
    }

    /// `DerivationOutputs(Some(id → path))` for a valid derivation,
    /// `DerivationOutputs(None)` when `drv` is not valid.
    pub fn query_derivation_outputs(&self, drv: &StorePath) -> EffectResult {
        answered(self.derivation_outputs(ReadWait::May, drv))
    }

    fn derivation_outputs(&self, wait: ReadWait, drv: &StorePath) -> Option<EffectResult> {
        self.read_as(wait, |conn| {
            let tx = conn.transaction()?;
            let Some(id) = path_id(&tx, drv.as_str())? else {
                return Ok(EffectOutput::DerivationOutputs(None));
            };
            let mut outputs = BTreeMap::new();
            {
                let mut stmt = tx.prepare_cached(SQL_QUERY_DERIVATION_OUTPUTS)?;
                let mut rows = stmt.query(params![id])?;
                while let Some(row) = rows.next()? {
                    let name: String = row.get(0)?;
                    let path: String = row.get(1)?;
                    outputs.insert(name, parse_db_path(&self.store_dir, &path)?);
                }
            }
            tx.commit()?;
            Ok(EffectOutput::DerivationOutputs(Some(outputs)))
        })
    }

    /// `Paths`: every valid path.
    pub fn query_all_valid_paths(&self) -> EffectResult {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(SQL_QUERY_ALL_VALID_PATHS)?;
            let mut rows = stmt.query([])?;
            let mut paths = BTreeSet::new();
            while let Some(row) = rows.next()? {
                let path: String = row.get(0)?;
                paths.insert(parse_db_path(&self.store_dir, &path)?);
            }
            Ok(EffectOutput::Paths(paths))
        })
    }

    /// `Path(Some(p))`: the valid path `STORE/<hash_part>…`, if any. Like
    /// the daemon, this looks up the first path at or after the prefix and
    /// keeps it only when it starts with the prefix, which an index makes
    /// cheap; a hash part that is not 32 characters long is refused with
    /// the daemon's words.
    pub fn query_path_from_hash_part(&self, hash_part: &str) -> EffectResult {
        answered(self.path_from_hash_part(ReadWait::May, hash_part))
    }

    fn path_from_hash_part(&self, wait: ReadWait, hash_part: &str) -> Option<EffectResult> {
        if hash_part.len() != HASH_PART_LEN {
            return Some(Err(EffectError::new(
                EffectErrorKind::Invalid,
                "invalid hash part",
            )));
        }
        let prefix = format!("{}/{}", self.store_dir.as_str(), hash_part);
        self.read_as(wait, |conn| {
            let mut stmt = conn.prepare_cached(SQL_QUERY_PATH_FROM_HASH_PART)?;
            let found: Option<String> = stmt
                .query_row(params![prefix], |row| row.get(0))
                .optional()?;
            match found {
                Some(path) if path.starts_with(&prefix) => Ok(EffectOutput::Path(Some(
                    parse_db_path(&self.store_dir, &path)?,
                ))),
                _ => Ok(EffectOutput::Path(None)),
            }
        })
    }

    /// `Strings`: the paths recorded in `FailedPaths`.
    pub fn query_failed_paths(&self) -> EffectResult {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(SQL_QUERY_FAILED_PATHS)?;
            let mut rows = stmt.query([])?;
            let mut paths = BTreeSet::new();
            while let Some(row) = rows.next()? {
                paths.insert(row.get::<_, String>(0)?);
            }
            Ok(EffectOutput::Strings(paths))
        })
    }

    // ---- writes

    /// Registers every group in one transaction, each group all or nothing.
    /// Yields `Registered` with one result per group, in order. An error
    /// for the whole effect means nothing at all was committed (the
    /// transaction could not start or commit, or the busy budget ran out).
    ///
    /// Within a group, as in the daemon's `registerValidPaths`: each item
    /// already valid gets its NAR size and hash updated (nothing else);
    /// each new item is inserted with its derivation outputs; then every
    /// reference is recorded, and a reference to a path that is not valid
    /// fails the group; last, the group's items are sorted topologically
    /// by the references now in the database, and a cycle fails the group.
    /// Groups see the groups committed before them in the same batch.
    pub fn register(&self, groups: Vec<RegistrationGroup>) -> EffectResult {
        if groups.is_empty() {
            return Ok(EffectOutput::Registered(Vec::new()));
        }
        if self.sync_before_registering {
            rustix::fs::sync();
        }
        let now = unix_now_s();
        let conn = self.writer();
        let results = self
            .retry_busy(|| register_batch(&conn, &groups, now))
            .map_err(|e| e.into_effect_error("registering valid paths"))?;
        Ok(EffectOutput::Registered(results))
    }

    /// `Paths`: the closure of `paths` under references, each path included
    /// when valid. One recursive query, not one per path.
    pub fn query_closure(&self, paths: &[StorePath]) -> EffectResult {
        self.read(|conn| {
            let tx = conn.transaction()?;
            let mut closure = BTreeSet::new();
            {
                let mut stmt = tx.prepare_cached(SQL_QUERY_CLOSURE)?;
                for path in paths {
                    if closure.contains(path) {
                        continue;
                    }
                    let mut rows = stmt.query(params![path.as_str()])?;
                    while let Some(row) = rows.next()? {
                        let p: String = row.get(0)?;
                        closure.insert(parse_db_path(&self.store_dir, &p)?);
                    }
                }
            }
            tx.commit()?;
            Ok(EffectOutput::Paths(closure))
        })
    }

    /// `Paths`: the valid paths whose NAR hash is the SHA-256 `hash`
    /// (written in base16, as Guix writes it, or base32), through
    /// guixd's index on `ValidPaths(hash)`.
    pub fn query_paths_by_nar_hash(&self, hash: &Hash) -> EffectResult {
        let base16 = format!("sha256:{}", hash.to_hex());
        let base32 = format!("sha256:{}", hash.to_base32());
        self.read(|conn| {
            let mut paths = BTreeSet::new();
            let mut stmt = conn.prepare_cached(SQL_PATHS_BY_NAR_HASH)?;
            let mut rows = stmt.query(params![base16, base32])?;
            while let Some(row) = rows.next()? {
                let p: String = row.get(0)?;
                paths.insert(parse_db_path(&self.store_dir, &p)?);
            }
            Ok(EffectOutput::Paths(paths))
        })
    }

    /// `Paths`: the valid paths guixd indexed as single files whose
    /// contents hash to `hash` (`guixd_ContentHashes`).
    pub fn find_flat_content(&self, hash: &Hash) -> EffectResult {
        let algo = hash.algo().name();
        let hex = hash.to_hex();
        self.read(|conn| {
            let mut paths = BTreeSet::new();
            let mut stmt = conn.prepare_cached(SQL_FIND_FLAT_CONTENT)?;
            let mut rows = stmt.query(params![algo, hex])?;
            while let Some(row) = rows.next()? {
                let p: String = row.get(0)?;
                paths.insert(parse_db_path(&self.store_dir, &p)?);
            }
            Ok(EffectOutput::Paths(paths))
        })
    }

    /// Records that the valid single-file item `path` has contents hashing
    /// to `hash` (for fixed-output reuse); rows for paths that are not
    /// valid any more are dropped meanwhile.
    pub fn index_flat_content(&self, path: &StorePath, hash: &Hash) -> EffectResult {
        let conn = self.writer();
        let algo = hash.algo().name();
        let hex = hash.to_hex();
        self.retry_busy(|| {
            in_write_transaction(&conn, |conn| {
                conn.prepare_cached(SQL_INDEX_FLAT_CONTENT)?
                    .execute(params![algo, hex, path.as_str()])?;
                conn.prepare_cached(SQL_PRUNE_FLAT_CONTENT)?
                    .execute(params![algo, hex])?;
                Ok(())
            })
        })
        .map_err(|e| e.into_effect_error("indexing store contents"))?;
        Ok(EffectOutput::Done)
    }

    /// Records permanent build failures (`--cache-failures`).
    pub fn record_failed_paths(&self, paths: &[StorePath], time_s: u64) -> EffectResult {
        let conn = self.writer();
        self.retry_busy(|| {
            in_write_transaction(&conn, |conn| {
                let mut stmt = conn.prepare_cached(SQL_RECORD_FAILED_PATH)?;
                for path in paths {
                    stmt.execute(params![path.as_str(), time_s as i64])?;
                }
                Ok(())
            })
        })
        .map_err(|e| e.into_effect_error("recording failed paths"))?;
        Ok(EffectOutput::Done)
    }

    /// Removes entries from `FailedPaths`: `"*"` clears all of them, a
    /// valid derivation clears its outputs, any other string clears itself.
    pub fn clear_failed_paths(&self, paths: &[String]) -> EffectResult {
        let conn = self.writer();
        self.retry_busy(|| {
            in_write_transaction(&conn, |conn| {
                let mut stmt = conn.prepare_cached(SQL_CLEAR_FAILED_PATH)?;
                for path in paths {
                    stmt.execute(params![path])?;
                }
                Ok(())
            })
        })
        .map_err(|e| e.into_effect_error("clearing failed paths"))?;
        Ok(EffectOutput::Done)
    }

    // ---- connections

    /// The writer, after undoing any transaction a panic left open.
    fn writer(&self) -> MutexGuard<'_, Connection> {
        let conn = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        if !conn.is_autocommit() {
            rollback_quietly(&conn);
        }
        conn
    }

    /// [`Db::read`] when `wait` allows it; otherwise runs `query` once on
    /// an idle pooled connection, and gives up (`None`) when there is none
    /// or the database is busy.
    fn read_as<T>(
        &self,
        wait: ReadWait,
        mut query: impl FnMut(&mut Connection) -> Result<T, DbError>,
    ) -> Option<Result<T, EffectError>> {
        if wait == ReadWait::May {
            return Some(self.read(query));
        }
        let idle = {
            let mut pool = self.readers.lock().unwrap_or_else(PoisonError::into_inner);
            pool.idle.pop()
        };
        let mut lease = ReaderLease {
            db: self,
            conn: Some(idle?),
        };
        let conn = lease.conn();
        let result = query(conn);
        if !conn.is_autocommit() {
            rollback_quietly(conn);
        }
        match result {
            Err(e) if e.is_busy() => None,
            other => Some(other.map_err(|e| e.into_effect_error("querying the store database"))),
        }
    }

    /// Runs `query` on a pooled read-only connection, retrying it while
    /// the database is busy.
    fn read<T>(
        &self,
        mut query: impl FnMut(&mut Connection) -> Result<T, DbError>,
    ) -> Result<T, EffectError> {
        let mut lease = self
            .lease_reader()
            .map_err(|e| e.into_effect_error("opening a store database reader"))?;
        self.retry_busy(|| {
            let conn = lease.conn();
            let result = query(conn);
            // A failed read can leave its transaction open (for instance
            // when a row does not parse); the next lease must start clean.
            if !conn.is_autocommit() {
                rollback_quietly(conn);
            }
            result
        })
        .map_err(|e| e.into_effect_error("querying the store database"))
    }

    fn lease_reader(&self) -> Result<ReaderLease<'_>, DbError> {
        let mut pool = self.readers.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(conn) = pool.idle.pop() {
                return Ok(ReaderLease {
                    db: self,
                    conn: Some(conn),
                });
            }
            if pool.open < self.limits.readers_max.max(1) {
                pool.open += 1;
                drop(pool);
                return match open_reader(&self.file, &self.limits) {
                    Ok(conn) => Ok(ReaderLease {
                        db: self,
                        conn: Some(conn),
                    }),
                    Err(e) => {
                        let mut pool = self.readers.lock().unwrap_or_else(PoisonError::into_inner);
                        pool.open -= 1;
                        drop(pool);
                        self.reader_returned.notify_one();
                        Err(e)
                    }
                };
            }
            pool = self
                .reader_returned
                .wait(pool)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Runs `attempt` until it succeeds, fails for a reason other than a
    /// busy database, or the busy budget is spent. Pauses grow
    /// exponentially and are randomised so that several processes waiting
    /// on each other do not retry in lockstep.
    fn retry_busy<T>(&self, mut attempt: impl FnMut() -> Result<T, DbError>) -> Result<T, DbError> {
        let started = Instant::now();
        let budget = Duration::from_millis(self.limits.busy_budget_ms);
        let mut pause_ms = self.limits.busy_pause_first_ms.max(1);
        let mut jitter = Jitter::new();
        loop {
            match attempt() {
                Err(e) if e.is_busy() => {
                    let elapsed = started.elapsed();
                    if elapsed >= budget {
                        return Err(DbError::BusyTooLong {
                            waited_ms: elapsed.as_millis().try_into().unwrap_or(u64::MAX),
                            last: Box::new(e),
                        });
                    }
                    let pause = Duration::from_millis(jitter.between(pause_ms / 2, pause_ms));
                    std::thread::sleep(pause.min(budget.saturating_sub(elapsed)));
                    pause_ms = (pause_ms * 2).min(self.limits.busy_pause_max_ms.max(1));
                }
                other => return other,
            }
        }
    }
}

/// Whether a read may wait: for a reader connection to come back, and
/// while the database is busy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReadWait {
    May,
    MustNot,
}

/// The result of a read that was allowed to wait, which always answers.
fn answered(result: Option<EffectResult>) -> EffectResult {
    result.unwrap_or_else(|| {
        Err(EffectError::new(
            EffectErrorKind::Invalid,
            "guixd bug: a read that may wait gave no answer",
        ))
    })
}

/// `<db dir>/db.sqlite`.
pub fn db_file(db_dir: &Path) -> PathBuf {
    db_dir.join("db.sqlite")
}

/// The daemon's check before opening the database: the directory must be
/// readable and writable, since SQLite creates the WAL and shared-memory
/// files next to the database.
pub fn check_db_dir_writable(db_dir: &Path) -> Result<(), SetupError> {
    rustix::fs::access(
        db_dir,
        rustix::fs::Access::READ_OK | rustix::fs::Access::WRITE_OK,
    )
    .map_err(|errno| SetupError::DbDirNotWritable {
        dir: db_dir.to_path_buf(),
        source: std::io::Error::from(errno),
    })
}

/// Opens a read-write connection to `file` as the daemon's `openDB` does
/// (creating the file only when `create`), with the daemon's pragmas.
pub fn open_writer(
    file: &Path,
    create: bool,
    options: ConnectionOptions,
    limits: &DbLimits,
) -> Result<Connection, SetupError> {
    let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    if create {
        flags |= OpenFlags::SQLITE_OPEN_CREATE;
    }
    let conn =
        Connection::open_with_flags(file, flags).map_err(|source| SetupError::CannotOpenDb {
            file: file.to_path_buf(),
            source,
        })?;
    let sqlite = |context: &'static str| move |source| SetupError::Sqlite { context, source };
    conn.busy_timeout(Duration::from_millis(limits.busy_timeout_ms))
        .map_err(sqlite("setting timeout"))?;
    conn.set_prepared_statement_cache_capacity(limits.statement_cache_entries);
    conn.execute_batch("pragma foreign_keys = 1;")
        .map_err(sqlite("enabling foreign keys"))?;
    let sync_mode = if options.fsync_metadata {
        "normal"
    } else {
        "off"
    };
    conn.execute_batch(&format!("pragma synchronous = {sync_mode};"))
        .map_err(sqlite("setting synchronous mode"))?;
    // Switching the journal mode needs a moment without other connections
    // in a transaction, so (like the daemon) only ask when it differs.
    let mode = if options.use_wal { "wal" } else { "truncate" };
    let previous: String = conn
        .query_row("pragma main.journal_mode;", [], |row| row.get(0))
        .map_err(sqlite("querying journal mode"))?;
    if !previous.eq_ignore_ascii_case(mode) {
        conn.execute_batch(&format!("pragma main.journal_mode = {mode};"))
            .map_err(sqlite("setting journal mode"))?;
    }
    if options.use_wal {
        conn.execute_batch("pragma wal_autocheckpoint = 40000;")
            .map_err(sqlite("setting autocheckpoint interval"))?;
    }
    Ok(conn)
}

// ---- statements (the daemon's, so the query plans are the same)

const SQL_PATH_ID: &str = "select id from ValidPaths where path = ?;";
const SQL_QUERY_PATH_INFO: &str =
    "select id, hash, registrationTime, deriver, narSize from ValidPaths where path = ?;";
const SQL_QUERY_REFERENCES: &str =
    "select path from Refs join ValidPaths on reference = id where referrer = ?;";
const SQL_QUERY_REFERRERS: &str = "select path from Refs join ValidPaths on referrer = id where reference = (select id from ValidPaths where path = ?);";
const SQL_QUERY_VALID_DERIVERS: &str =
    "select v.path from DerivationOutputs d join ValidPaths v on d.drv = v.id where d.path = ?;";
const SQL_QUERY_DERIVATION_OUTPUTS: &str = "select id, path from DerivationOutputs where drv = ?;";
const SQL_QUERY_PATH_FROM_HASH_PART: &str = "select path from ValidPaths where path >= ? limit 1;";
const SQL_QUERY_ALL_VALID_PATHS: &str = "select path from ValidPaths;";
const SQL_QUERY_FAILED_PATHS: &str = "select path from FailedPaths;";
const SQL_REGISTER_VALID_PATH: &str = "insert into ValidPaths (path, hash, registrationTime, deriver, narSize) values (?, ?, ?, ?, ?);";
const SQL_UPDATE_PATH_INFO: &str = "update ValidPaths set narSize = ?, hash = ? where path = ?;";
const SQL_ADD_REFERENCE: &str = "insert or replace into Refs (referrer, reference) values (?, ?);";
const SQL_ADD_DERIVATION_OUTPUT: &str =
    "insert or replace into DerivationOutputs (drv, id, path) values (?, ?, ?);";
/// Every valid path reachable from `?1` through references, `?1` included
/// when valid.
const SQL_QUERY_CLOSURE: &str = "with recursive closure(id) as \
     (select id from ValidPaths where path = ?1 \
      union select r.reference from Refs r join closure c on r.referrer = c.id) \
     select v.path from ValidPaths v join closure c on v.id = c.id";

/// guixd's own additions to the schema, harmless to Guix's tools (which
/// neither read nor write them): an index to find items by NAR hash, and a
/// table of the flat content hashes of single-file items, both used to
/// reuse store contents for fixed-output derivations.
pub const GUIXD_SCHEMA_SQL: &str =
    "create index if not exists guixd_IndexValidPathsHash on ValidPaths(hash);
create table if not exists guixd_ContentHashes (
    algo text not null,
    hash text not null,
    path text not null,
    primary key (algo, hash, path)
);";

const SQL_PATHS_BY_NAR_HASH: &str = "select path from ValidPaths where hash in (?1, ?2)";
const SQL_FIND_FLAT_CONTENT: &str = "select c.path from guixd_ContentHashes c \
     join ValidPaths v on v.path = c.path where c.algo = ?1 and c.hash = ?2";
const SQL_INDEX_FLAT_CONTENT: &str =
    "insert or ignore into guixd_ContentHashes (algo, hash, path) values (?1, ?2, ?3)";
const SQL_PRUNE_FLAT_CONTENT: &str = "delete from guixd_ContentHashes where algo = ?1 and hash = ?2 \
     and path not in (select path from ValidPaths)";

const SQL_RECORD_FAILED_PATH: &str =
    "insert or replace into FailedPaths (path, time) values (?1, ?2)";

const SQL_CLEAR_FAILED_PATH: &str = "delete from FailedPaths where ?1 = '*' or path = ?1 \
     or path in (select d.path from DerivationOutputs d join ValidPaths v on d.drv = v.id where v.path = ?1);";

/// What went wrong inside the database layer, before it becomes an
/// [`EffectError`].
#[derive(Debug)]
enum DbError {
    /// SQLite refused; may be a busy database, which is retried.
    Sqlite(rusqlite::Error),
    /// The request or the stored data is wrong, with the words the client
    /// should see.
    Refused(EffectError),
    /// Busy for longer than the budget.
    BusyTooLong { waited_ms: u64, last: Box<DbError> },
}

impl From<rusqlite::Error> for DbError {
    fn from(e: rusqlite::Error) -> DbError {
        DbError::Sqlite(e)
    }
}

impl DbError {
    /// True for the conditions that only mean "someone else holds the
    /// database right now": busy (including WAL's stale-snapshot and
    /// recovery variants), locked, and WAL's locking-protocol hiccup.
    fn is_busy(&self) -> bool {
        match self {
            DbError::Sqlite(e) => matches!(
                e.sqlite_error_code(),
                Some(
                    ErrorCode::DatabaseBusy
                        | ErrorCode::DatabaseLocked
                        | ErrorCode::FileLockingProtocolFailed
                )
            ),
            DbError::Refused(_) | DbError::BusyTooLong { .. } => false,
        }
    }

    fn into_effect_error(self, context: &str) -> EffectError {
        match self {
            DbError::Sqlite(e) => sqlite_effect_error(context, &e),
            DbError::Refused(e) => e,
            DbError::BusyTooLong { waited_ms, last } => {
                let last = last.into_effect_error(context);
                EffectError::new(
                    EffectErrorKind::Database,
                    format!(
                        "{} (another process held the store database for {waited_ms} ms)",
                        last.message
                    ),
                )
            }
        }
    }
}

fn sqlite_effect_error(context: &str, e: &rusqlite::Error) -> EffectError {
    EffectError::new(EffectErrorKind::Database, format!("{context}: {e}"))
}

/// Idle read-only connections, and how many exist in all.
struct ReaderPool {
    idle: Vec<Connection>,
    open: usize,
}

/// A reader taken from the pool; handed back when dropped, even when the
/// query panicked.
struct ReaderLease<'a> {
    db: &'a Db,
    /// Always `Some` until `drop`.
    conn: Option<Connection>,
}

impl ReaderLease<'_> {
    fn conn(&mut self) -> &mut Connection {
        // Invariant: `conn` is only taken out in `drop`.
        self.conn
            .as_mut()
            .expect("a lease holds its connection until dropped")
    }
}

impl Drop for ReaderLease<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            let mut pool = self
                .db
                .readers
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            pool.idle.push(conn);
            drop(pool);
            self.db.reader_returned.notify_one();
        }
    }
}

/// A read-only connection. It needs no pragmas beyond a busy wait: the
/// journal mode is a property of the file, set by the writer.
fn open_reader(file: &Path, limits: &DbLimits) -> Result<Connection, DbError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(file, flags)?;
    conn.busy_timeout(Duration::from_millis(limits.busy_timeout_ms))?;
    conn.set_prepared_statement_cache_capacity(limits.statement_cache_entries);
    Ok(conn)
}

/// Runs `body` in a `BEGIN IMMEDIATE` transaction and commits, rolling
/// back on any error. Taking the write lock at the start means a busy
/// database shows up right away, before any work, never as a stale
/// snapshot in the middle.
fn in_write_transaction<T>(
    conn: &Connection,
    body: impl FnOnce(&Connection) -> Result<T, DbError>,
) -> Result<T, DbError> {
    conn.execute_batch("begin immediate;")?;
    let result = body(conn).and_then(|value| {
        conn.execute_batch("commit;")?;
        Ok(value)
    });
    if result.is_err() && !conn.is_autocommit() {
        rollback_quietly(conn);
    }
    result
}

fn rollback_quietly(conn: &Connection) {
    // A failed rollback leaves nothing to do: SQLite has then already
    // ended the transaction itself.
    let _ = conn.execute_batch("rollback;");
}

/// One attempt at a registration batch.
fn register_batch(
    conn: &Connection,
    groups: &[RegistrationGroup],
    now_s: u64,
) -> Result<Vec<Result<(), EffectError>>, DbError> {
    in_write_transaction(conn, |conn| {
        let mut results = Vec::with_capacity(groups.len());
        for group in groups {
            conn.execute_batch("savepoint registration_group;")?;
            match register_group(conn, group, now_s) {
                Ok(()) => {
                    conn.execute_batch("release registration_group;")?;
                    results.push(Ok(()));
                }
                Err(e) => {
                    // Some errors (I/O, a full disk, busy) make SQLite
                    // abandon the whole transaction; then nothing of the
                    // batch is left to commit and the batch fails (or is
                    // retried, when busy).
                    if e.is_busy() || conn.is_autocommit() {
                        return Err(e);
                    }
                    conn.execute_batch(
                        "rollback to registration_group; release registration_group;",
                    )?;
                    results.push(Err(e.into_effect_error("registering valid paths")));
                }
            }
        }
        Ok(results)
    })
}

/// Registers one group inside the current savepoint.
fn register_group(conn: &Connection, group: &RegistrationGroup, now_s: u64) -> Result<(), DbError> {
    for item in &group.items {
        let info = &item.info;
        let hash = hash_column(info)?;
        let nar_size = match info.nar_size {
            0 => None,
            n => Some(i64::try_from(n).map_err(|_| {
                refused(
                    EffectErrorKind::Invalid,
                    format!("NAR size of `{}' is too large", info.path),
                )
            })?),
        };
        if path_id(conn, info.path.as_str())?.is_some() {
            conn.prepare_cached(SQL_UPDATE_PATH_INFO)?.execute(params![
                nar_size,
                hash,
                info.path.as_str()
            ])?;
        } else {
            let time_s = if info.registration_time == 0 {
                now_s
            } else {
                info.registration_time
            };
            let time_s = i64::try_from(time_s).unwrap_or(i64::MAX);
            let deriver = info.deriver.as_ref().map(StorePath::as_str);
            conn.prepare_cached(SQL_REGISTER_VALID_PATH)?
                .execute(params![info.path.as_str(), hash, time_s, deriver, nar_size])?;
            let id = conn.last_insert_rowid();
            let mut add_output = conn.prepare_cached(SQL_ADD_DERIVATION_OUTPUT)?;
            for (name, path) in &item.derivation_outputs {
                add_output.execute(params![id, name, path.as_str()])?;
            }
        }
    }

    for item in &group.items {
        let referrer = valid_path_id(conn, &item.info.path)?;
        let mut add_reference = conn.prepare_cached(SQL_ADD_REFERENCE)?;
        for reference in &item.info.references {
            add_reference.execute(params![referrer, valid_path_id(conn, reference)?])?;
        }
    }

    let paths: BTreeSet<&str> = group
        .items
        .iter()
        .map(|item| item.info.path.as_str())
        .collect();
    check_acyclic(conn, &paths)
}

/// The `hash` column: `sha256:` and the hex digest. The database only
/// ever holds SHA-256 NAR hashes.
fn hash_column(info: &ValidPathInfo) -> Result<String, DbError> {
    if info.nar_hash.algo() != HashAlgo::Sha256 {
        return Err(refused(
            EffectErrorKind::Invalid,
            format!("the NAR hash of `{}' is not a SHA-256 hash", info.path),
        ));
    }
    Ok(format!("sha256:{}", info.nar_hash.to_hex()))
}

/// The id of a path that must be valid. The message is the C++ daemon's
/// exactly, placeholder included: its format string was never filled in,
/// and clients match on "is not valid".
fn valid_path_id(conn: &Connection, path: &StorePath) -> Result<i64, DbError> {
    path_id(conn, path.as_str())?
        .ok_or_else(|| refused(EffectErrorKind::Invalid, "path `%1%' is not valid"))
}

fn path_id(conn: &Connection, path: &str) -> Result<Option<i64>, DbError> {
    Ok(conn
        .prepare_cached(SQL_PATH_ID)?
        .query_row(params![path], |row| row.get(0))
        .optional()?)
}

/// The daemon's topological sort of a registered group, kept only for its
/// verdict: a cycle among the group's items (through references as now
/// recorded, self-references aside) fails the group.
fn check_acyclic(conn: &Connection, paths: &BTreeSet<&str>) -> Result<(), DbError> {
    match first_cycle(paths, |path| references_within(conn, path, paths))? {
        Some(path) => Err(refused(
            EffectErrorKind::Invalid,
            format!("cycle detected in the references of `{path}'"),
        )),
        None => Ok(()),
    }
}

/// The path at which a depth-first walk of `paths` first comes back to a
/// path it is still inside, if any. `references` gives a path's
/// references within `paths`, without itself, in path order; roots are
/// taken in path order too, so the path named is the one the daemon's
/// recursive walk names. This walk is iterative, because a group can be a
/// chain of thousands of items.
fn first_cycle<E>(
    paths: &BTreeSet<&str>,
    mut references: impl FnMut(&str) -> Result<Vec<String>, E>,
) -> Result<Option<String>, E> {
    let mut visited: BTreeSet<String> = BTreeSet::new();
    let mut parents: BTreeSet<String> = BTreeSet::new();
    // Each frame: a path being visited, its references, and how many of
    // them were visited already.
    let mut stack: Vec<(String, Vec<String>, usize)> = Vec::new();
    for &root in paths {
        if !visited.insert(root.to_owned()) {
            continue;
        }
        parents.insert(root.to_owned());
        stack.push((root.to_owned(), references(root)?, 0));
        while let Some((path, refs, next)) = stack.last_mut() {
            if *next == refs.len() {
                parents.remove(path.as_str());
                stack.pop();
                continue;
            }
            let child = refs[*next].clone();
            *next += 1;
            if parents.contains(&child) {
                return Ok(Some(child));
            }
            if visited.insert(child.clone()) {
                parents.insert(child.clone());
                let child_refs = references(&child)?;
                stack.push((child, child_refs, 0));
            }
        }
    }
    Ok(None)
}

/// The recorded references of `path` that are other members of `paths`,
/// in path order.
fn references_within(
    conn: &Connection,
    path: &str,
    paths: &BTreeSet<&str>,
) -> Result<Vec<String>, DbError> {
    let Some(id) = path_id(conn, path)? else {
        return Ok(Vec::new());
    };
    let mut stmt = conn.prepare_cached(SQL_QUERY_REFERENCES)?;
    let mut rows = stmt.query(params![id])?;
    let mut refs = BTreeSet::new();
    while let Some(row) = rows.next()? {
        let reference: String = row.get(0)?;
        if reference != path && paths.contains(reference.as_str()) {
            refs.insert(reference);
        }
    }
    Ok(refs.into_iter().collect())
}

/// The stored info of `path`, read as the daemon's `queryPathInfo` does.
fn path_info(
    conn: &Connection,
    store_dir: &StoreDir,
    path: &StorePath,
) -> Result<Option<ValidPathInfo>, DbError> {
    type Row = (i64, String, Option<i64>, Option<String>, Option<i64>);
    let row: Option<Row> = conn
        .prepare_cached(SQL_QUERY_PATH_INFO)?
        .query_row(params![path.as_str()], |row| {
            Ok((
                row.get(0)?,
                row.get(1)?,
                row.get(2)?,
                row.get(3)?,
                row.get(4)?,
            ))
        })
        .optional()?;
    let Some((id, hash, registration_time, deriver, nar_size)) = row else {
        return Ok(None);
    };
    let nar_hash = parse_hash_field(path, &hash)?;
    // A deriver that is not a store path of ours (an empty string written
    // by some old tool, or a path under another store directory) cannot be
    // represented; it reads as "no deriver" rather than making the whole
    // item unreadable.
    let deriver = deriver
        .filter(|d| !d.is_empty())
        .and_then(|d| store_dir.parse_path(&d).ok());
    let mut references = BTreeSet::new();
    {
        let mut stmt = conn.prepare_cached(SQL_QUERY_REFERENCES)?;
        let mut rows = stmt.query(params![id])?;
        while let Some(row) = rows.next()? {
            let reference: String = row.get(0)?;
            references.insert(parse_db_path(store_dir, &reference)?);
        }
    }
    Ok(Some(ValidPathInfo {
        path: path.clone(),
        deriver,
        nar_hash,
        references,
        // Negative or NULL values (never written by Guix) read as 0, as the
        // daemon's integer reads do for NULL.
        registration_time: registration_time
            .and_then(|t| u64::try_from(t).ok())
            .unwrap_or(0),
        nar_size: nar_size.and_then(|n| u64::try_from(n).ok()).unwrap_or(0),
    }))
}

/// Parses a `hash` column, `<algo>:<digest>`, with the daemon's error
/// texts. The digest is hex, as everything Guix writes; nix-base32 is
/// accepted too, since it cannot be mistaken for hex.
fn parse_hash_field(path: &StorePath, text: &str) -> Result<Hash, DbError> {
    let Some((algo, digest)) = text.split_once(':') else {
        return Err(refused(
            EffectErrorKind::Database,
            format!("corrupt hash `{text}' in valid-path entry for `{path}'"),
        ));
    };
    let Some(algo) = HashAlgo::parse(algo) else {
        return Err(refused(
            EffectErrorKind::Database,
            format!("unknown hash type `{algo}' in valid-path entry for `{path}'"),
        ));
    };
    Hash::parse_hex_or_base32(algo, digest)
        .map_err(|e| refused(EffectErrorKind::Database, e.to_string()))
}

/// A path read from the database, which must lie in our store directory.
fn parse_db_path(store_dir: &StoreDir, text: &str) -> Result<StorePath, DbError> {
    store_dir.parse_path(text).map_err(|_| {
        refused(
            EffectErrorKind::Database,
            format!(
                "the store database holds `{text}', which is not a path in `{}'",
                store_dir.as_str()
            ),
        )
    })
}

fn select_paths(
    conn: &Connection,
    store_dir: &StoreDir,
    sql: &str,
    arg: &str,
) -> Result<BTreeSet<StorePath>, DbError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(params![arg])?;
    let mut paths = BTreeSet::new();
    while let Some(row) = rows.next()? {
        let path: String = row.get(0)?;
        paths.insert(parse_db_path(store_dir, &path)?);
    }
    Ok(paths)
}

fn refused(kind: EffectErrorKind, message: impl Into<String>) -> DbError {
    DbError::Refused(EffectError::new(kind, message))
}

fn unix_now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A small xorshift generator for retry pauses, seeded from std's per-
/// process random hasher keys; its quality only has to break lockstep.
struct Jitter(u64);

impl Jitter {
    fn new() -> Jitter {
        use std::hash::{BuildHasher, Hasher};
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(0);
        Jitter(hasher.finish() | 1)
    }

    /// A value in `low..=high`.
    fn between(&mut self, low: u64, high: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        if high <= low {
            return low;
        }
        low + self.0 % (high - low + 1)
    }
}

// ---- the garbage collector's queries (`crate::gc`)
//
// Kept apart from the per-path queries above: the collector reads the whole
// reference graph in bulk (three queries in one read transaction, instead
// of one query per path), and invalidates one path at a time in a write
// transaction that checks for referrers itself.

/// Every valid path with what the collector needs of it.
const SQL_GC_PATHS: &str = "select id, path, deriver, narSize from ValidPaths;";
/// Every reference.
const SQL_GC_REFS: &str = "select referrer, reference from Refs;";
/// Every derivation output.
const SQL_GC_DRV_OUTPUTS: &str = "select drv, path from DerivationOutputs;";
const SQL_GC_PATH_ID_SIZE: &str = "select id, narSize from ValidPaths where path = ?;";
/// The referrers of a path other than itself.
const SQL_GC_OTHER_REFERRERS: &str = "select v.path from Refs r join ValidPaths v on r.referrer = v.id \
     where r.reference = ?1 and r.referrer != ?1;";
const SQL_GC_INVALIDATE_ID: &str = "delete from ValidPaths where id = ?;";
const SQL_GC_INVALIDATE_PATH: &str = "delete from ValidPaths where path = ?;";

impl Db {
    /// The whole reference graph, read in one transaction so that the
    /// three tables agree with each other.
    pub fn gc_rows(&self) -> Result<GcRows, EffectError> {
        self.read(|conn| {
            let tx = conn.transaction()?;
            let mut rows = GcRows::default();
            {
                let mut stmt = tx.prepare(SQL_GC_PATHS)?;
                let mut query = stmt.query([])?;
                while let Some(row) = query.next()? {
                    let nar_size: Option<i64> = row.get(3)?;
                    rows.paths.push(PathRow {
                        id: row.get(0)?,
                        path: row.get(1)?,
                        deriver: row.get(2)?,
                        nar_size: nar_size.and_then(|n| u64::try_from(n).ok()).unwrap_or(0),
                    });
                }
                let mut stmt = tx.prepare(SQL_GC_REFS)?;
                let mut query = stmt.query([])?;
                while let Some(row) = query.next()? {
                    rows.references.push((row.get(0)?, row.get(1)?));
                }
                let mut stmt = tx.prepare(SQL_GC_DRV_OUTPUTS)?;
                let mut query = stmt.query([])?;
                while let Some(row) = query.next()? {
                    rows.derivation_outputs.push((row.get(0)?, row.get(1)?));
                }
            }
            tx.commit()?;
            Ok(rows)
        })
    }

    /// Whether `path` (any string) is a valid path.
    pub fn is_valid_path(&self, path: &str) -> Result<bool, EffectError> {
        self.read(|conn| Ok(path_id(conn, path)?.is_some()))
    }

    /// Invalidates `path` for the collector, in one write transaction that
    /// first looks at it again: a path that is not valid is left alone
    /// ([`Invalidation::NotValid`]); a path that the plan thought invalid
    /// but is valid now is left alone ([`Invalidation::BecameValid`]); a
    /// path with referrers other than itself is refused
    /// ([`Invalidation::InUse`], also when only the schema's `on delete
    /// restrict` notices one). References from the path go with it
    /// (cascade), and so do its derivation outputs.
    pub fn invalidate_for_gc(
        &self,
        path: &StorePath,
        expect_valid: bool,
    ) -> Result<Invalidation, EffectError> {
        let conn = self.writer();
        self.retry_busy(|| {
            in_write_transaction(&conn, |conn| {
                let row: Option<(i64, Option<i64>)> = conn
                    .prepare_cached(SQL_GC_PATH_ID_SIZE)?
                    .query_row(params![path.as_str()], |row| Ok((row.get(0)?, row.get(1)?)))
                    .optional()?;
                let Some((id, nar_size)) = row else {
                    return Ok(Invalidation::NotValid);
                };
                if !expect_valid {
                    return Ok(Invalidation::BecameValid);
                }
                let mut users = Vec::new();
                {
                    let mut stmt = conn.prepare_cached(SQL_GC_OTHER_REFERRERS)?;
                    let mut rows = stmt.query(params![id])?;
                    while let Some(row) = rows.next()? {
                        users.push(row.get::<_, String>(0)?);
                    }
                }
                if !users.is_empty() {
                    users.sort();
                    return Ok(Invalidation::InUse(users));
                }
                match conn
                    .prepare_cached(SQL_GC_INVALIDATE_ID)?
                    .execute(params![id])
                {
                    Ok(_) => Ok(Invalidation::Invalidated {
                        nar_size: nar_size.and_then(|n| u64::try_from(n).ok()).unwrap_or(0),
                    }),
                    Err(e) if e.sqlite_error_code() == Some(ErrorCode::ConstraintViolation) => {
                        Ok(Invalidation::InUse(Vec::new()))
                    }
                    Err(e) => Err(e.into()),
                }
            })
        })
        .map_err(|e| e.into_effect_error("invalidating a path"))
    }

    /// Invalidates `path` without looking at its referrers (the daemon's
    /// `invalidatePath`, used by `verify-store`); the schema still refuses
    /// when a valid path refers to it.
    pub fn invalidate_unchecked(&self, path: &str) -> Result<(), EffectError> {
        let conn = self.writer();
        self.retry_busy(|| {
            in_write_transaction(&conn, |conn| {
                conn.prepare_cached(SQL_GC_INVALIDATE_PATH)?
                    .execute(params![path])?;
                Ok(())
            })
        })
        .map_err(|e| e.into_effect_error(&format!("invalidating `{path}'")))
    }

    /// Records a NAR hash and size found by `verify-store` (size 0 is
    /// stored as NULL, as the daemon does).
    pub fn update_hash_and_size(
        &self,
        path: &StorePath,
        nar_hash: &Hash,
        nar_size: u64,
    ) -> Result<(), EffectError> {
        let hash = format!("{}:{}", nar_hash.algo().name(), nar_hash.to_hex());
        let size = match nar_size {
            0 => None,
            n => Some(i64::try_from(n).unwrap_or(i64::MAX)),
        };
        let conn = self.writer();
        self.retry_busy(|| {
            in_write_transaction(&conn, |conn| {
                conn.prepare_cached(SQL_UPDATE_PATH_INFO)?.execute(params![
                    size,
                    hash,
                    path.as_str()
                ])?;
                Ok(())
            })
        })
        .map_err(|e| e.into_effect_error("updating path info"))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::setup::prepare_store;
    use guixd_core::config::Dirs;
    use guixd_core::effect::Registration;
    use guixd_core::settings::Typed;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Arc, mpsc};

    /// A store in a fresh directory under `/tmp`, removed when dropped.
    pub(crate) struct TempStore {
        pub root: PathBuf,
        pub config: OsConfig,
    }

    impl Drop for TempStore {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }

    pub(crate) fn temp_root(tag: &str) -> PathBuf {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let root =
            std::env::temp_dir().join(format!("guixd-os-db-{}-{n}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        root
    }

    /// A configuration whose store and state live under `root`.
    pub(crate) fn config_at(root: &Path) -> OsConfig {
        let settings = Typed {
            reserved_size_bytes: 4096,
            ..Typed::default()
        };
        OsConfig {
            dirs: Dirs {
                store: StoreDir::new(root.join("store").to_str().unwrap()).unwrap(),
                state: root.join("state"),
                log: root.join("log"),
                db: root.join("state/db"),
                conf: root.join("etc"),
                guix_program: PathBuf::from("/bin/false"),
            },
            settings,
            uid: rustix::process::geteuid().as_raw(),
            gid: rustix::process::getegid().as_raw(),
        }
    }

    pub(crate) fn temp_store(tag: &str) -> TempStore {
        let root = temp_root(tag);
        let config = config_at(&root);
        TempStore { root, config }
    }

    fn open_store(tag: &str) -> (TempStore, Db) {
        let store = temp_store(tag);
        prepare_store(&store.config).unwrap();
        let db = Db::open(&store.config).unwrap();
        (store, db)
    }

    fn item(db: &Db, name: &str) -> StorePath {
        db.store_dir
            .make_store_path("source", &Hash::sha256(name.as_bytes()), name)
            .unwrap()
    }

    fn reg(path: &StorePath, refs: &[&StorePath]) -> Registration {
        Registration {
            info: ValidPathInfo {
                path: path.clone(),
                deriver: None,
                nar_hash: Hash::sha256(path.as_str().as_bytes()),
                references: refs.iter().map(|&r| r.clone()).collect(),
                registration_time: 1_700_000_000,
                nar_size: 1234,
            },
            derivation_outputs: Vec::new(),
        }
    }

    fn group(items: Vec<Registration>) -> RegistrationGroup {
        RegistrationGroup { items }
    }

    fn registered(result: EffectResult) -> Vec<Result<(), EffectError>> {
        match result {
            Ok(EffectOutput::Registered(results)) => results,
            other => panic!("not a registration result: {other:?}"),
        }
    }

    fn paths(result: EffectResult) -> BTreeSet<StorePath> {
        match result {
            Ok(EffectOutput::Paths(paths)) => paths,
            other => panic!("not paths: {other:?}"),
        }
    }

    fn info(db: &Db, path: &StorePath) -> Option<ValidPathInfo> {
        match db.query_path_info(path) {
            Ok(EffectOutput::PathInfo(info)) => info,
            other => panic!("not a path info: {other:?}"),
        }
    }

    fn set<const N: usize>(items: [&StorePath; N]) -> BTreeSet<StorePath> {
        items.into_iter().cloned().collect()
    }

    fn raw(db: &Db) -> Connection {
        let conn = Connection::open(db.file()).unwrap();
        conn.busy_timeout(Duration::from_secs(10)).unwrap();
        conn
    }

    #[test]
    fn db_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Db>();
    }

    #[test]
    fn register_then_query_everything_back() {
        let (_store, db) = open_store("everything");
        let a = item(&db, "a");
        let b = item(&db, "b");
        let drv = item(&db, "thing.drv");
        let out = item(&db, "thing");
        let lib = item(&db, "thing-lib");
        let mut drv_reg = reg(&drv, &[&a]);
        drv_reg.derivation_outputs = vec![
            ("out".to_owned(), out.clone()),
            ("lib".to_owned(), lib.clone()),
        ];
        let mut out_reg = reg(&out, &[&a, &out]);
        out_reg.info.deriver = Some(drv.clone());
        let mut b_reg = reg(&b, &[&a, &b]);
        b_reg.info.nar_size = 0;
        let results =
            registered(db.register(vec![group(vec![reg(&a, &[]), b_reg, drv_reg, out_reg])]));
        assert_eq!(results, vec![Ok(())]);

        let a_info = info(&db, &a).unwrap();
        assert_eq!(a_info.path, a);
        assert_eq!(a_info.deriver, None);
        assert_eq!(a_info.nar_hash, Hash::sha256(a.as_str().as_bytes()));
        assert_eq!(a_info.references, BTreeSet::new());
        assert_eq!(a_info.registration_time, 1_700_000_000);
        assert_eq!(a_info.nar_size, 1234);
        let b_info = info(&db, &b).unwrap();
        assert_eq!(b_info.references, set([&a, &b]));
        assert_eq!(b_info.nar_size, 0);
        assert_eq!(info(&db, &out).unwrap().deriver, Some(drv.clone()));
        assert_eq!(info(&db, &lib), None);

        // The stored text is the daemon's.
        let conn = raw(&db);
        let (hash, deriver, size): (String, Option<String>, Option<i64>) = conn
            .query_row(
                "select hash, deriver, narSize from ValidPaths where path = ?",
                [b.as_str()],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        assert_eq!(
            hash,
            format!("sha256:{}", Hash::sha256(b.as_str().as_bytes()).to_hex())
        );
        assert_eq!((deriver, size), (None, None));

        assert_eq!(
            paths(db.query_valid_paths(&[a.clone(), lib.clone(), out.clone()])),
            set([&a, &out])
        );
        assert_eq!(paths(db.query_referrers(&a)), set([&b, &drv, &out]));
        assert_eq!(paths(db.query_referrers(&lib)), BTreeSet::new());
        assert_eq!(paths(db.query_valid_derivers(&out)), set([&drv]));
        assert_eq!(paths(db.query_valid_derivers(&lib)), set([&drv]));
        assert_eq!(paths(db.query_valid_derivers(&a)), BTreeSet::new());
        let outputs = BTreeMap::from([
            ("lib".to_owned(), lib.clone()),
            ("out".to_owned(), out.clone()),
        ]);
        assert_eq!(
            db.query_derivation_outputs(&drv),
            Ok(EffectOutput::DerivationOutputs(Some(outputs)))
        );
        assert_eq!(
            db.query_derivation_outputs(&a),
            Ok(EffectOutput::DerivationOutputs(Some(BTreeMap::new())))
        );
        assert_eq!(
            db.query_derivation_outputs(&lib),
            Ok(EffectOutput::DerivationOutputs(None))
        );
        assert_eq!(paths(db.query_all_valid_paths()), set([&a, &b, &drv, &out]));

        let hash_part = |p: &StorePath| p.hash_part().unwrap().to_owned();
        assert_eq!(
            db.query_path_from_hash_part(&hash_part(&out)),
            Ok(EffectOutput::Path(Some(out.clone())))
        );
        assert_eq!(
            db.query_path_from_hash_part(&hash_part(&lib)),
            Ok(EffectOutput::Path(None))
        );
        assert_eq!(
            db.query_path_from_hash_part(&"0".repeat(32)),
            Ok(EffectOutput::Path(None))
        );
        assert_eq!(
            db.query_path_from_hash_part("short").unwrap_err().message,
            "invalid hash part"
        );
    }

    #[test]
    fn failed_paths_are_listed_and_cleared_as_the_daemon_does() {
        let (_store, db) = open_store("failed");
        let drv = item(&db, "x.drv");
        let out = item(&db, "x");
        let mut drv_reg = reg(&drv, &[]);
        drv_reg.derivation_outputs = vec![("out".to_owned(), out.clone())];
        assert_eq!(
            registered(db.register(vec![group(vec![drv_reg])])),
            vec![Ok(())]
        );
        let conn = raw(&db);
        for p in [out.as_str(), "/elsewhere/one", "/elsewhere/two"] {
            conn.execute("insert into FailedPaths (path, time) values (?, 1)", [p])
                .unwrap();
        }
        let strings = |r: EffectResult| match r {
            Ok(EffectOutput::Strings(s)) => s,
            other => panic!("not strings: {other:?}"),
        };
        assert_eq!(strings(db.query_failed_paths()).len(), 3);
        // A derivation clears its outputs; any other string clears itself.
        db.clear_failed_paths(&[drv.as_str().to_owned(), "/elsewhere/one".to_owned()])
            .unwrap();
        assert_eq!(
            strings(db.query_failed_paths()),
            BTreeSet::from(["/elsewhere/two".to_owned()])
        );
        db.clear_failed_paths(&["*".to_owned()]).unwrap();
        assert!(strings(db.query_failed_paths()).is_empty());
    }

    #[test]
    fn a_group_with_an_unknown_reference_fails_alone() {
        let (_store, db) = open_store("unknown-ref");
        let a = item(&db, "a");
        let b = item(&db, "b");
        let c = item(&db, "c");
        let e = item(&db, "e");
        let missing = item(&db, "missing");
        let results = registered(db.register(vec![
            group(vec![reg(&a, &[])]),
            group(vec![reg(&e, &[]), reg(&b, &[&missing])]),
            group(vec![reg(&c, &[&a])]),
        ]));
        assert_eq!(results[0], Ok(()));
        let err = results[1].clone().unwrap_err();
        assert_eq!(err.message, "path `%1%' is not valid");
        assert_eq!(err.kind, EffectErrorKind::Invalid);
        assert_eq!(results[2], Ok(()));
        // The failed group left nothing behind, not even its good item.
        assert_eq!(paths(db.query_all_valid_paths()), set([&a, &c]));
        assert_eq!(info(&db, &c).unwrap().references, set([&a]));
        // A later group may refer to what an earlier one of the batch made
        // valid.
        let d = item(&db, "d");
        let f = item(&db, "f");
        let results =
            registered(db.register(vec![group(vec![reg(&d, &[])]), group(vec![reg(&f, &[&d])])]));
        assert_eq!(results, vec![Ok(()), Ok(())]);
    }

    #[test]
    fn a_cycle_fails_its_group_and_names_the_daemons_path() {
        let (_store, db) = open_store("cycle");
        let x = item(&db, "x");
        let y = item(&db, "y");
        let z = item(&db, "z");
        let ok = item(&db, "ok");
        // The walk starts from the smallest path and names the first path
        // it meets again: from z (z → x → y → x) that is x; otherwise it
        // starts inside the cycle and names its smaller member.
        let named = if (z < x && z < y) || x < y { &x } else { &y };
        let results = registered(db.register(vec![
            group(vec![reg(&x, &[&y]), reg(&y, &[&x]), reg(&z, &[&x])]),
            group(vec![reg(&ok, &[&ok])]),
        ]));
        assert_eq!(
            results[0].clone().unwrap_err().message,
            format!("cycle detected in the references of `{named}'")
        );
        assert_eq!(results[1], Ok(()));
        assert_eq!(
            paths(db.query_valid_paths(&[x.clone(), y.clone(), z.clone()])),
            BTreeSet::new()
        );
    }

    #[test]
    fn a_long_chain_is_not_a_cycle() {
        let (_store, db) = open_store("chain");
        let items: Vec<StorePath> = (0..3000).map(|i| item(&db, &format!("n{i}"))).collect();
        let regs = items
            .iter()
            .enumerate()
            .map(|(i, p)| match i {
                0 => reg(p, &[]),
                _ => reg(p, &[&items[i - 1]]),
            })
            .collect();
        assert_eq!(registered(db.register(vec![group(regs)])), vec![Ok(())]);
        assert_eq!(paths(db.query_all_valid_paths()).len(), 3000);
    }

    #[test]
    fn registering_again_updates_only_size_and_hash() {
        let (_store, db) = open_store("again");
        let a = item(&db, "a");
        let drv = item(&db, "a.drv");
        let mut first = reg(&a, &[]);
        first.info.deriver = Some(drv.clone());
        first.info.registration_time = 100;
        assert_eq!(
            registered(db.register(vec![group(vec![first])])),
            vec![Ok(())]
        );
        let mut second = reg(&a, &[&a]);
        second.info.deriver = None;
        second.info.registration_time = 200;
        second.info.nar_size = 99;
        second.info.nar_hash = Hash::sha256(b"other");
        assert_eq!(
            registered(db.register(vec![group(vec![second])])),
            vec![Ok(())]
        );
        let now = info(&db, &a).unwrap();
        assert_eq!(now.registration_time, 100);
        assert_eq!(now.deriver, Some(drv));
        assert_eq!(now.nar_size, 99);
        assert_eq!(now.nar_hash, Hash::sha256(b"other"));
        // References are only ever added.
        assert_eq!(now.references, set([&a]));
    }

    #[test]
    fn registration_time_zero_means_now_and_non_sha256_is_refused() {
        let (_store, db) = open_store("time");
        let a = item(&db, "a");
        let b = item(&db, "b");
        let mut now = reg(&a, &[]);
        now.info.registration_time = 0;
        let before = unix_now_s();
        let mut sha1 = reg(&b, &[]);
        sha1.info.nar_hash = Hash::digest(HashAlgo::Sha1, b"x");
        let results = registered(db.register(vec![group(vec![now]), group(vec![sha1])]));
        assert_eq!(results[0], Ok(()));
        assert_eq!(
            results[1].clone().unwrap_err().kind,
            EffectErrorKind::Invalid
        );
        let time = info(&db, &a).unwrap().registration_time;
        assert!(time >= before && time <= unix_now_s(), "{time}");
    }

    #[test]
    fn rows_written_by_other_tools_are_read_like_the_daemon() {
        let (_store, db) = open_store("foreign-rows");
        let conn = raw(&db);
        let a = item(&db, "a");
        let b = item(&db, "b");
        let c = item(&db, "c");
        let d = item(&db, "d");
        let hash = Hash::sha256(b"content");
        conn.execute(
            "insert into ValidPaths (path, hash, registrationTime, deriver, narSize) values (?, ?, 5, NULL, NULL)",
            params![a.as_str(), format!("sha256:{}", hash.to_base32())],
        )
        .unwrap();
        conn.execute(
            "insert into ValidPaths (path, hash, registrationTime, deriver, narSize) values (?, 'abc', 5, '', 7)",
            params![b.as_str()],
        )
        .unwrap();
        conn.execute(
            "insert into ValidPaths (path, hash, registrationTime, deriver, narSize) values (?, 'md6:00', 5, '', 7)",
            params![c.as_str()],
        )
        .unwrap();
        conn.execute(
            "insert into ValidPaths (path, hash, registrationTime, deriver, narSize) values (?, ?, 5, '', 7)",
            params![d.as_str(), format!("sha256:{}", hash.to_hex())],
        )
        .unwrap();
        let a_info = info(&db, &a).unwrap();
        assert_eq!(
            (a_info.nar_hash, a_info.nar_size, a_info.deriver),
            (hash, 0, None)
        );
        assert_eq!(info(&db, &d).unwrap().deriver, None);
        assert_eq!(
            db.query_path_info(&b).unwrap_err().message,
            format!("corrupt hash `abc' in valid-path entry for `{b}'")
        );
        assert_eq!(
            db.query_path_info(&c).unwrap_err().message,
            format!("unknown hash type `md6' in valid-path entry for `{c}'")
        );
        // A failed read leaves the reader usable.
        assert!(info(&db, &a).is_some());
    }

    #[test]
    fn an_outside_writer_makes_registration_wait_not_fail() {
        let (_store, db) = open_store("outside-writer");
        let outside = raw(&db);
        let (held_tx, held_rx) = mpsc::channel();
        let holder = std::thread::spawn(move || {
            outside
                .execute_batch(
                    "begin immediate; insert into FailedPaths (path, time) values ('/x', 1);",
                )
                .unwrap();
            held_tx.send(()).unwrap();
            // Holding the write lock for a while is the point of this
            // test: a Guile writer in the middle of its transaction.
            std::thread::sleep(Duration::from_millis(300));
            outside.execute_batch("commit;").unwrap();
        });
        held_rx.recv().unwrap();
        let a = item(&db, "a");
        let started = Instant::now();
        assert_eq!(
            registered(db.register(vec![group(vec![reg(&a, &[])])])),
            vec![Ok(())]
        );
        assert!(started.elapsed() >= Duration::from_millis(100));
        holder.join().unwrap();
        assert!(info(&db, &a).is_some());
        // Readers were never in the way.
        assert_eq!(
            db.query_failed_paths(),
            Ok(EffectOutput::Strings(BTreeSet::from(["/x".to_owned()])))
        );
    }

    #[test]
    fn an_outside_writer_that_never_lets_go_fails_the_batch_after_the_budget() {
        let store = temp_store("outside-forever");
        prepare_store(&store.config).unwrap();
        let limits = DbLimits {
            busy_budget_ms: 150,
            ..DbLimits::default()
        };
        let db = Db::open_with_limits(&store.config, limits).unwrap();
        let outside = raw(&db);
        let (held_tx, held_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let holder = std::thread::spawn(move || {
            outside.execute_batch("begin immediate;").unwrap();
            held_tx.send(()).unwrap();
            release_rx.recv().unwrap();
            outside.execute_batch("commit;").unwrap();
        });
        held_rx.recv().unwrap();
        let a = item(&db, "a");
        let err = db.register(vec![group(vec![reg(&a, &[])])]).unwrap_err();
        assert_eq!(err.kind, EffectErrorKind::Database);
        assert!(!err.message.contains("is busy"), "{}", err.message);
        release_tx.send(()).unwrap();
        holder.join().unwrap();
        // Once free, the same batch goes through.
        assert_eq!(
            registered(db.register(vec![group(vec![reg(&a, &[])])])),
            vec![Ok(())]
        );
    }

    #[test]
    fn a_read_that_must_not_wait_gives_up_without_an_idle_reader() {
        let (_store, db) = open_store("read-now");
        let first = item(&db, "first");
        assert_eq!(
            registered(db.register(vec![group(vec![reg(&first, &[])])])),
            vec![Ok(())]
        );
        let ask = Effect::QueryPathInfo {
            path: first.clone(),
        };
        // No reader connection is open yet, and opening one may wait.
        assert!(db.read_now(&ask).is_none());
        let waited = db.query_path_info(&first).unwrap();
        // The connection that read went back to the pool: now it answers,
        // with what a waiting read says.
        assert_eq!(db.read_now(&ask), Some(Ok(waited)));
        let many = Effect::QueryValidPaths {
            paths: vec![first.clone(); guixd_core::effect::POINT_READ_PATHS_MAX + 1],
        };
        assert!(db.read_now(&many).is_none(), "not a point read");
        // While every idle reader is leased, it gives up again.
        let lease = db.lease_reader().unwrap();
        assert!(db.read_now(&ask).is_none());
        drop(lease);
        assert!(db.read_now(&ask).is_some());
    }

    #[test]
    fn readers_run_while_the_writer_commits() {
        let (_store, db) = open_store("readers");
        let db = Arc::new(db);
        let first = item(&db, "first");
        assert_eq!(
            registered(db.register(vec![group(vec![reg(&first, &[])])])),
            vec![Ok(())]
        );
        // An outside reader in the middle of a long read transaction does
        // not hold the writer up either.
        let outside = raw(&db);
        outside
            .execute_batch("begin; select count(*) from ValidPaths;")
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let readers: Vec<_> = (0..4)
            .map(|_| {
                let db = Arc::clone(&db);
                let stop = Arc::clone(&stop);
                let first = first.clone();
                std::thread::spawn(move || {
                    let mut seen = 0;
                    let mut rounds = 0;
                    while !stop.load(Ordering::Relaxed) || rounds == 0 {
                        let now = paths(db.query_all_valid_paths()).len();
                        assert!(now >= seen, "the valid set shrank from {seen} to {now}");
                        seen = now;
                        assert!(info(&db, &first).is_some());
                        rounds += 1;
                    }
                    rounds
                })
            })
            .collect();
        for i in 0..100 {
            let p = item(&db, &format!("p{i}"));
            assert_eq!(
                registered(db.register(vec![group(vec![reg(&p, &[&first])])])),
                vec![Ok(())]
            );
        }
        stop.store(true, Ordering::Relaxed);
        for reader in readers {
            assert!(reader.join().unwrap() > 0);
        }
        outside.execute_batch("commit;").unwrap();
        assert_eq!(paths(db.query_referrers(&first)).len(), 100);
    }

    #[test]
    fn a_single_reader_is_shared_by_many_threads() {
        let store = temp_store("one-reader");
        prepare_store(&store.config).unwrap();
        let limits = DbLimits {
            readers_max: 1,
            ..DbLimits::default()
        };
        let db = Arc::new(Db::open_with_limits(&store.config, limits).unwrap());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let db = Arc::clone(&db);
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        assert!(paths(db.query_all_valid_paths()).is_empty());
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(db.readers.lock().unwrap().open, 1);
    }

    #[test]
    fn the_rollback_journal_works_too() {
        let mut store = temp_store("truncate");
        store.config.settings.use_sqlite_wal = false;
        store.config.settings.fsync_metadata = false;
        prepare_store(&store.config).unwrap();
        let db = Db::open(&store.config).unwrap();
        // Unlike WAL, a rollback journal mode belongs to the connection,
        // not to the file.
        let mode: String = db
            .writer()
            .query_row("pragma journal_mode;", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "truncate");
        let a = item(&db, "a");
        assert_eq!(
            registered(db.register(vec![group(vec![reg(&a, &[])])])),
            vec![Ok(())]
        );
        assert!(info(&db, &a).is_some());
    }

    #[test]
    fn guixd_indexes_find_items_by_nar_hash_and_flat_content() {
        let (_store, db) = open_store("reuse-index");
        let a = item(&db, "a");
        let r = reg(&a, &[]);
        let nar = r.info.nar_hash;
        assert!(
            registered(db.register(vec![group(vec![r])]))
                .iter()
                .all(Result::is_ok)
        );
        assert_eq!(paths(db.query_paths_by_nar_hash(&nar)), set([&a]));
        let content = Hash::sha256(b"contents");
        assert!(paths(db.find_flat_content(&content)).is_empty());
        db.index_flat_content(&a, &content).unwrap();
        assert_eq!(paths(db.find_flat_content(&content)), set([&a]));
        // Only valid items are found.
        let b = item(&db, "b");
        db.index_flat_content(&b, &content).unwrap();
        assert_eq!(paths(db.find_flat_content(&content)), set([&a]));
    }

    #[test]
    fn a_new_database_is_in_wal_mode_with_guix_schema() {
        let (_store, db) = open_store("wal");
        let conn = raw(&db);
        let mode: String = conn
            .query_row("pragma journal_mode;", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let tables: Vec<String> = conn
            .prepare(
                "select name from sqlite_master where type = 'table' \
                 and name not like 'guixd\\_%' escape '\\' order by name",
            )
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            tables,
            [
                "DerivationOutputs",
                "FailedPaths",
                "Refs",
                "ValidPaths",
                "sqlite_sequence"
            ]
        );
    }

    /// The daemon's recursive walk, as a model for [`first_cycle`].
    fn first_cycle_model(
        paths: &BTreeSet<&str>,
        edges: &BTreeMap<&str, Vec<String>>,
    ) -> Option<String> {
        fn visit(
            path: &str,
            edges: &BTreeMap<&str, Vec<String>>,
            visited: &mut BTreeSet<String>,
            parents: &mut BTreeSet<String>,
        ) -> Option<String> {
            if parents.contains(path) {
                return Some(path.to_owned());
            }
            if !visited.insert(path.to_owned()) {
                return None;
            }
            parents.insert(path.to_owned());
            for child in &edges[path] {
                if let Some(found) = visit(child, edges, visited, parents) {
                    return Some(found);
                }
            }
            parents.remove(path);
            None
        }
        let (mut visited, mut parents) = (BTreeSet::new(), BTreeSet::new());
        paths
            .iter()
            .find_map(|p| visit(p, edges, &mut visited, &mut parents))
    }

    #[test]
    fn the_iterative_walk_names_the_same_path_as_the_recursive_one() {
        fn prop(node_count: u8, raw_edges: Vec<(u8, u8)>) -> bool {
            let names: Vec<String> = (0..node_count % 9).map(|i| format!("p{i}")).collect();
            if names.is_empty() {
                return true;
            }
            let paths: BTreeSet<&str> = names.iter().map(String::as_str).collect();
            let mut edges: BTreeMap<&str, Vec<String>> =
                paths.iter().map(|&p| (p, Vec::new())).collect();
            for (from, to) in raw_edges {
                let from = names[usize::from(from) % names.len()].as_str();
                let to = &names[usize::from(to) % names.len()];
                if from != to && !edges[from].contains(to) {
                    edges.get_mut(from).unwrap().push(to.clone());
                }
            }
            for refs in edges.values_mut() {
                refs.sort();
            }
            let iterative = first_cycle(&paths, |p| Ok::<_, ()>(edges[p].clone())).unwrap();
            iterative == first_cycle_model(&paths, &edges)
        }
        guixd_testkit::check(prop as fn(u8, Vec<(u8, u8)>) -> bool);
    }

    #[test]
    fn jitter_stays_in_range() {
        let mut jitter = Jitter::new();
        for _ in 0..1000 {
            let v = jitter.between(5, 10);
            assert!((5..=10).contains(&v));
        }
        assert_eq!(jitter.between(7, 3), 7);
    }

    // ---- against the real C++ daemon

    const GUIX_ROOT: &str = "/var/cache/guixd/guix-root";
    const CHROOT: &str = "/usr/sbin/chroot";

    /// A C++ `guix-daemon` running in the Guix root on a store under
    /// `<root>/tmp`, and one client connection to it. Dropping it closes
    /// the connection (which ends the daemon's session process) and kills
    /// the daemon.
    struct CxxDaemon {
        child: std::process::Child,
        wire: Option<Wire>,
    }

    impl CxxDaemon {
        /// `inner` is the directory as the daemon sees it; the store is
        /// `<inner>/store`, the state `<inner>/state`.
        fn start(inner: &str) -> CxxDaemon {
            let socket = format!("{inner}/sock");
            let child = std::process::Command::new(CHROOT)
                .arg(GUIX_ROOT)
                .arg("/usr/bin/guix-daemon")
                .arg(format!("--listen={socket}"))
                .arg("--disable-chroot")
                .env_clear()
                .env("PATH", "/usr/bin:/bin")
                .env("NIX_STORE_DIR", format!("{inner}/store"))
                .env("GUIX_STATE_DIRECTORY", format!("{inner}/state"))
                .env("GUIX_LOG_DIRECTORY", format!("{inner}/log"))
                .env("GUIX_DATABASE_DIRECTORY", format!("{inner}/state/db"))
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            let mut daemon = CxxDaemon { child, wire: None };
            // The daemon is another process: polling for its socket is the
            // only way to know it is listening.
            let host_socket = format!("{GUIX_ROOT}{socket}");
            let deadline = Instant::now() + Duration::from_secs(20);
            let stream = loop {
                match std::os::unix::net::UnixStream::connect(&host_socket) {
                    Ok(stream) => break stream,
                    Err(e) if Instant::now() < deadline => {
                        let _ = e;
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(e) => panic!("the C++ daemon did not listen on {host_socket}: {e}"),
                }
            };
            stream
                .set_read_timeout(Some(Duration::from_secs(30)))
                .unwrap();
            let mut wire = Wire(stream);
            wire.handshake();
            daemon.wire = Some(wire);
            daemon
        }

        fn wire(&mut self) -> &mut Wire {
            self.wire.as_mut().unwrap()
        }
    }

    impl Drop for CxxDaemon {
        fn drop(&mut self) {
            self.wire = None;
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// Just enough of the worker protocol to drive the C++ daemon.
    struct Wire(std::os::unix::net::UnixStream);

    impl Wire {
        fn put(&mut self, n: u64) {
            use std::io::Write;
            self.0.write_all(&n.to_le_bytes()).unwrap();
        }

        fn put_str(&mut self, s: &str) {
            use std::io::Write;
            self.put(s.len() as u64);
            self.0.write_all(s.as_bytes()).unwrap();
            self.0.write_all(&[0; 8][..(8 - s.len() % 8) % 8]).unwrap();
        }

        fn get(&mut self) -> u64 {
            use std::io::Read;
            let mut buf = [0; 8];
            self.0.read_exact(&mut buf).unwrap();
            u64::from_le_bytes(buf)
        }

        fn get_str(&mut self) -> String {
            use std::io::Read;
            let len = usize::try_from(self.get()).unwrap();
            let mut buf = vec![0; len.div_ceil(8) * 8];
            self.0.read_exact(&mut buf).unwrap();
            buf.truncate(len);
            String::from_utf8(buf).unwrap()
        }

        fn get_strs(&mut self) -> Vec<String> {
            (0..self.get()).map(|_| self.get_str()).collect()
        }

        /// Reads log messages up to the end of an operation's work.
        fn end_of_work(&mut self) {
            loop {
                match self.get() {
                    0x616c_7473 => return,
                    0x6f6c_6d67 => {
                        self.get_str();
                    }
                    0x6378_7470 => {
                        let message = self.get_str();
                        panic!("the C++ daemon failed: {message} (status {})", self.get());
                    }
                    other => panic!("unexpected stderr tag {other:#x}"),
                }
            }
        }

        fn handshake(&mut self) {
            self.put(0x6e69_7863);
            assert_eq!(self.get(), 0x6478_696f);
            let _daemon_version = self.get();
            self.put(0x164);
            self.put(0); // no CPU affinity
            self.put(1); // reserve space
            self.end_of_work();
        }

        fn add_text(&mut self, name: &str, text: &str) -> String {
            self.put(8);
            self.put_str(name);
            self.put_str(text);
            self.put(0);
            self.end_of_work();
            self.get_str()
        }

        fn is_valid(&mut self, path: &str) -> bool {
            self.put(1);
            self.put_str(path);
            self.end_of_work();
            self.get() != 0
        }

        /// (deriver, hex NAR hash, references, registration time, NAR size)
        fn path_info(&mut self, path: &str) -> (String, String, Vec<String>, u64, u64) {
            self.put(26);
            self.put_str(path);
            self.end_of_work();
            (
                self.get_str(),
                self.get_str(),
                self.get_strs(),
                self.get(),
                self.get(),
            )
        }
    }

    fn cxx_daemon_available() -> bool {
        let available = rustix::process::geteuid().is_root()
            && Path::new(CHROOT).exists()
            && Path::new(GUIX_ROOT).join("usr/bin/guix-daemon").exists();
        if !available {
            eprintln!("note: skipping: needs root and the C++ guix-daemon in {GUIX_ROOT}");
        }
        available
    }

    /// A directory under the Guix root's `/tmp`: its path inside the root,
    /// and the configurations that reach it from here (`host`: every path
    /// as seen from outside; `db`: the store named as the daemon sees it,
    /// which is how the database spells paths).
    fn cxx_dirs(tag: &str) -> (String, PathBuf, OsConfig, OsConfig) {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let inner = format!("/tmp/guixd-os-cxx-{}-{n}-{tag}", std::process::id());
        let host = PathBuf::from(format!("{GUIX_ROOT}{inner}"));
        let _ = std::fs::remove_dir_all(&host);
        std::fs::create_dir_all(&host).unwrap();
        let host_config = config_at(&host);
        let mut db_config = host_config.clone();
        db_config.dirs.store = StoreDir::new(&format!("{inner}/store")).unwrap();
        (inner, host, host_config, db_config)
    }

    fn schema_rows(file: &Path) -> Vec<(String, String, Option<String>)> {
        let conn = Connection::open_with_flags(file, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
        // guixd's own additions (GUIXD_SCHEMA_SQL) are not Guix's schema.
        conn.prepare(
            "select type, name, sql from sqlite_master where name not like '%guixd\\_%' escape '\\' order by name",
        )
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    #[test]
    fn a_database_the_cxx_daemon_created_is_used_as_is_and_shared_live() {
        if !cxx_daemon_available() {
            return;
        }
        let (inner, host, host_config, db_config) = cxx_dirs("theirs");
        let mut daemon = CxxDaemon::start(&inner);
        let hello = daemon.wire().add_text("hello", "hello world");

        // The daemon's session still has the database open while we use it.
        prepare_store(&host_config).unwrap();
        let db = Db::open(&db_config).unwrap();
        let hello = db.store_dir.parse_path(&hello).unwrap();
        let theirs = info(&db, &hello).unwrap();
        let (_, hash_hex, _, time, size) = daemon.wire().path_info(hello.as_str());
        assert_eq!(theirs.nar_hash.to_hex(), hash_hex);
        assert_eq!((theirs.registration_time, theirs.nar_size), (time, size));
        assert_eq!(paths(db.query_all_valid_paths()), set([&hello]));

        let ours = item(&db, "ours");
        let mut ours_reg = reg(&ours, &[&hello]);
        ours_reg.info.deriver = Some(item(&db, "ours.drv"));
        assert_eq!(
            registered(db.register(vec![group(vec![ours_reg.clone()])])),
            vec![Ok(())]
        );
        assert!(daemon.wire().is_valid(ours.as_str()));
        let (deriver, hash_hex, refs, time, size) = daemon.wire().path_info(ours.as_str());
        assert_eq!(deriver, ours_reg.info.deriver.unwrap().as_str());
        assert_eq!(hash_hex, ours_reg.info.nar_hash.to_hex());
        assert_eq!(refs, vec![hello.as_str().to_owned()]);
        assert_eq!(
            (time, size),
            (ours_reg.info.registration_time, ours_reg.info.nar_size)
        );
        drop(daemon);

        // The schema text we write is the one the daemon wrote.
        let fresh = temp_store("schema-compare");
        prepare_store(&fresh.config).unwrap();
        assert_eq!(
            schema_rows(&db_file(&fresh.config.dirs.db)),
            schema_rows(&db_file(&host_config.dirs.db))
        );
        drop(db);
        let _ = std::fs::remove_dir_all(host);
    }

    #[test]
    fn a_database_guixd_created_is_used_by_the_cxx_daemon() {
        if !cxx_daemon_available() {
            return;
        }
        let (inner, host, host_config, db_config) = cxx_dirs("ours");
        prepare_store(&host_config).unwrap();
        let db = Db::open(&db_config).unwrap();
        let ours = item(&db, "ours");
        assert_eq!(
            registered(db.register(vec![group(vec![reg(&ours, &[])])])),
            vec![Ok(())]
        );

        let mut daemon = CxxDaemon::start(&inner);
        assert!(daemon.wire().is_valid(ours.as_str()));
        let theirs = daemon.wire().add_text("theirs", "some text");
        let theirs = db.store_dir.parse_path(&theirs).unwrap();
        assert!(info(&db, &theirs).is_some());
        assert_eq!(paths(db.query_all_valid_paths()), set([&ours, &theirs]));
        drop(daemon);
        drop(db);
        let _ = std::fs::remove_dir_all(host);
    }
}

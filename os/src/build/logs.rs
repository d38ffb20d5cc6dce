//! Build log files (spec 02 §8): `<logdir>/drvs/<first two characters of
//! the drv's base name>/<the rest>`, plus `.gz` (gzip, level 9) or `.bz2`
//! (bzip2, 900k blocks) unless uncompressed; the raw output of the builder,
//! written as it comes.
//!
//! Keeps true:
//! - directories are created 0777 and files 0666, both less the umask, and
//!   an existing log of the same derivation is truncated, as the daemon
//!   does;
//! - compression is streaming: memory per log is the compressor's state,
//!   whatever the log's size; an uncompressed log gets each chunk written
//!   at once, so it can be followed while the build runs;
//! - open logs live in a table keyed by [`LogId`] behind a mutex held only
//!   to look up, add or remove an entry; each log has its own mutex, so
//!   different logs are written in parallel. An unknown id is an error,
//!   never a panic; the table is bounded by [`LOGS_OPEN_MAX`];
//! - a log still open when the daemon stops is finished by the compressor
//!   when dropped (best effort: nobody is left to report a failure to).

use super::Builds;
use crate::OsConfig;
use crate::locks::sys_error;
use bzip2::write::BzEncoder;
use flate2::write::GzEncoder;
use guixd_core::build_plan::LogId;
use guixd_core::effect::{
    EffectError, EffectErrorKind, EffectOutput, EffectResult, LogCompression,
};
use guixd_core::store_path::StorePath;
use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// How many logs may be open at once. The core opens one per running
/// build; this only turns a core bug into an error instead of unbounded
/// descriptors.
pub const LOGS_OPEN_MAX: usize = 65_536;

/// Open build logs.
pub(crate) struct Logs {
    /// `<logdir>/drvs`.
    drvs_dir: PathBuf,
    open: Mutex<HashMap<LogId, Arc<Mutex<LogFile>>>>,
}

impl Logs {
    pub(crate) fn new(config: &OsConfig) -> Logs {
        Logs::at(&config.dirs.log)
    }

    /// Logs under the log directory `log_dir`.
    pub(crate) fn at(log_dir: &Path) -> Logs {
        Logs {
            drvs_dir: log_dir.join("drvs"),
            open: Mutex::new(HashMap::new()),
        }
    }

    /// Creates (or truncates) the log file of `drv`.
    pub(crate) fn open(
        &self,
        log: LogId,
        drv: &StorePath,
        compression: LogCompression,
    ) -> Result<(), EffectError> {
        if lock(&self.open).contains_key(&log) {
            return Err(opened_twice(log));
        }
        let path = self.path_of(drv, compression)?;
        let file = LogFile::create(path, compression)?;
        let mut open = lock(&self.open);
        if open.len() >= LOGS_OPEN_MAX {
            return Err(EffectError::new(
                EffectErrorKind::Invalid,
                format!("too many open build logs (the limit is {LOGS_OPEN_MAX})"),
            ));
        }
        if open.contains_key(&log) {
            return Err(opened_twice(log));
        }
        open.insert(log, Arc::new(Mutex::new(file)));
        Ok(())
    }

    /// Appends builder output to an open log.
    pub(crate) fn write(&self, log: LogId, data: &[u8]) -> Result<(), EffectError> {
        let entry = lock(&self.open)
            .get(&log)
            .cloned()
            .ok_or_else(|| unknown(log))?;
        lock(&entry).write(data)
    }

    /// Finishes the compressed stream and closes the file; the log is
    /// forgotten even when finishing fails.
    pub(crate) fn close(&self, log: LogId) -> Result<(), EffectError> {
        let entry = lock(&self.open).remove(&log).ok_or_else(|| unknown(log))?;
        lock(&entry).finish()
    }

    /// `<logdir>/drvs/XX/REST[.gz|.bz2]`, creating `<logdir>/drvs/XX`.
    fn path_of(
        &self,
        drv: &StorePath,
        compression: LogCompression,
    ) -> Result<PathBuf, EffectError> {
        let base = drv.base_name();
        let (Some(first), Some(rest)) = (base.get(..2), base.get(2..)) else {
            return Err(EffectError::new(
                EffectErrorKind::Invalid,
                format!("guixd bug: `{drv}' has no name to log under"),
            ));
        };
        let dir = self.drvs_dir.join(first);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o777)
            .create(&dir)
            .map_err(|e| sys_error(format_args!("creating directory `{}'", dir.display()), &e))?;
        let suffix = match compression {
            LogCompression::None => "",
            LogCompression::Gzip => ".gz",
            LogCompression::Bzip2 => ".bz2",
        };
        Ok(dir.join(format!("{rest}{suffix}")))
    }
}

impl Builds {
    /// Opens the log file of `drv` (`LogOpen`).
    pub fn log_open(
        &self,
        log: LogId,
        drv: &StorePath,
        compression: LogCompression,
    ) -> EffectResult {
        self.logs.open(log, drv, compression)?;
        Ok(EffectOutput::Done)
    }

    /// Appends to an open log (`LogWrite`).
    pub fn log_write(&self, log: LogId, data: &[u8]) -> EffectResult {
        self.logs.write(log, data)?;
        Ok(EffectOutput::Done)
    }

    /// Finishes and closes a log (`LogClose`).
    pub fn log_close(&self, log: LogId) -> EffectResult {
        self.logs.close(log)?;
        Ok(EffectOutput::Done)
    }
}

/// One open log.
struct LogFile {
    path: PathBuf,
    /// `None` once finished (or after finishing failed).
    writer: Option<LogWriter>,
}

enum LogWriter {
    Plain(File),
    Gzip(GzEncoder<File>),
    Bzip2(BzEncoder<File>),
}

impl LogFile {
    fn create(path: PathBuf, compression: LogCompression) -> Result<LogFile, EffectError> {
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o666)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| sys_error(format_args!("creating log file `{}'", path.display()), &e))?;
        let writer = match compression {
            LogCompression::None => LogWriter::Plain(file),
            LogCompression::Gzip => {
                LogWriter::Gzip(GzEncoder::new(file, flate2::Compression::best()))
            }
            LogCompression::Bzip2 => {
                LogWriter::Bzip2(BzEncoder::new(file, bzip2::Compression::best()))
            }
        };
        Ok(LogFile {
            path,
            writer: Some(writer),
        })
    }

    fn write(&mut self, data: &[u8]) -> Result<(), EffectError> {
        let written = match self.writer.as_mut() {
            Some(LogWriter::Plain(f)) => f.write_all(data),
            Some(LogWriter::Gzip(w)) => w.write_all(data),
            Some(LogWriter::Bzip2(w)) => w.write_all(data),
            None => {
                return Err(EffectError::new(
                    EffectErrorKind::Invalid,
                    format!(
                        "guixd bug: log `{}' written after closing",
                        self.path.display()
                    ),
                ));
            }
        };
        written.map_err(|e| {
            sys_error(
                format_args!("writing to log file `{}'", self.path.display()),
                &e,
            )
        })
    }

    fn finish(&mut self) -> Result<(), EffectError> {
        let finished = match self.writer.take() {
            Some(LogWriter::Plain(f)) => Ok(f),
            Some(LogWriter::Gzip(w)) => w.finish(),
            Some(LogWriter::Bzip2(w)) => w.finish(),
            None => return Ok(()),
        };
        // Dropping the file closes it; a close error after a successful
        // write cannot be told from success without fsync, which the daemon
        // does not do for logs either.
        finished.map(drop).map_err(|e| {
            sys_error(
                format_args!("closing log file `{}'", self.path.display()),
                &e,
            )
        })
    }
}

fn unknown(log: LogId) -> EffectError {
    EffectError::new(
        EffectErrorKind::Invalid,
        format!("guixd bug: unknown build log {}", log.0),
    )
}

fn opened_twice(log: LogId) -> EffectError {
    EffectError::new(
        EffectErrorKind::Invalid,
        format!("guixd bug: build log {} opened twice", log.0),
    )
}

/// Locks a mutex, ignoring poisoning: a log's state is valid between
/// statements, and a panic elsewhere is already the error to report.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scratch::Scratch;
    use guixd_core::StoreDir;
    use std::io::Read;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn scratch(tag: &str) -> Scratch {
        crate::scratch::scratch("logs", tag)
    }

    fn drv() -> StorePath {
        StoreDir::new("/gnu/store")
            .unwrap()
            .parse_path("/gnu/store/0123456789abcdfghijklmnpqrsvwxyz-hello-2.12.drv")
            .unwrap()
    }

    /// Writes a log in pieces and returns the file's path and the bytes.
    fn write_log(logs: &Logs, id: u64, compression: LogCompression) -> Vec<u8> {
        let log = LogId(id);
        logs.open(log, &drv(), compression).unwrap();
        let mut expected = Vec::new();
        for i in 0..2000u32 {
            let line = format!("line {i}: building hello \u{2014} \x1b[1mbold\x1b[0m\n");
            logs.write(log, line.as_bytes()).unwrap();
            expected.extend_from_slice(line.as_bytes());
        }
        // Binary output passes through untouched.
        let binary: Vec<u8> = (0..=255u8).collect();
        logs.write(log, &binary).unwrap();
        expected.extend_from_slice(&binary);
        logs.close(log).unwrap();
        expected
    }

    #[test]
    fn all_three_compressions_read_back() {
        let dir = scratch("three");
        let logs = Logs::at(&dir.0);
        let sub = dir.0.join("drvs/01");
        let rest = "23456789abcdfghijklmnpqrsvwxyz-hello-2.12.drv";

        let expected = write_log(&logs, 1, LogCompression::None);
        assert_eq!(fs::read(sub.join(rest)).unwrap(), expected);

        let expected = write_log(&logs, 2, LogCompression::Gzip);
        let mut got = Vec::new();
        flate2::read::GzDecoder::new(File::open(sub.join(format!("{rest}.gz"))).unwrap())
            .read_to_end(&mut got)
            .unwrap();
        assert_eq!(got, expected);

        let expected = write_log(&logs, 3, LogCompression::Bzip2);
        let mut got = Vec::new();
        bzip2::read::BzDecoder::new(File::open(sub.join(format!("{rest}.bz2"))).unwrap())
            .read_to_end(&mut got)
            .unwrap();
        assert_eq!(got, expected);

        // Exactly the layout of spec 02 §8, nothing else.
        let mut names: Vec<String> = fs::read_dir(&sub)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [rest.to_owned(), format!("{rest}.bz2"), format!("{rest}.gz")]
        );
        let entries: Vec<_> = fs::read_dir(dir.0.join("drvs")).unwrap().collect();
        assert_eq!(entries.len(), 1);
    }

    #[test]
    fn modes_follow_the_umask() {
        let dir = scratch("modes");
        let logs = Logs::at(&dir.0);
        write_log(&logs, 1, LogCompression::None);
        let umask = current_umask();
        let file = dir
            .0
            .join("drvs/01/23456789abcdfghijklmnpqrsvwxyz-hello-2.12.drv");
        assert_eq!(fs::metadata(&file).unwrap().mode() & 0o777, 0o666 & !umask);
        let sub = dir.0.join("drvs/01");
        assert_eq!(fs::metadata(&sub).unwrap().mode() & 0o777, 0o777 & !umask);
    }

    #[test]
    fn reopening_truncates() {
        let dir = scratch("truncate");
        let logs = Logs::at(&dir.0);
        write_log(&logs, 1, LogCompression::None);
        logs.open(LogId(2), &drv(), LogCompression::None).unwrap();
        logs.write(LogId(2), b"again\n").unwrap();
        logs.close(LogId(2)).unwrap();
        let file = dir
            .0
            .join("drvs/01/23456789abcdfghijklmnpqrsvwxyz-hello-2.12.drv");
        assert_eq!(fs::read(file).unwrap(), b"again\n");
    }

    #[test]
    fn unknown_and_doubled_ids_are_errors() {
        let dir = scratch("unknown");
        let logs = Logs::at(&dir.0);
        assert!(logs.write(LogId(9), b"x").is_err());
        assert!(logs.close(LogId(9)).is_err());
        logs.open(LogId(1), &drv(), LogCompression::Gzip).unwrap();
        let e = logs
            .open(LogId(1), &drv(), LogCompression::Gzip)
            .unwrap_err();
        assert!(e.message.contains("opened twice"), "{}", e.message);
        logs.close(LogId(1)).unwrap();
        assert!(logs.close(LogId(1)).is_err());
        assert!(logs.write(LogId(1), b"x").is_err());
    }

    #[test]
    fn an_unwritable_log_dir_is_reported() {
        let dir = scratch("unwritable");
        // A file where the `drvs` directory should be.
        fs::write(dir.0.join("drvs"), b"").unwrap();
        let logs = Logs::at(&dir.0);
        let e = logs
            .open(LogId(1), &drv(), LogCompression::Bzip2)
            .unwrap_err();
        assert!(
            e.message.starts_with("creating directory `"),
            "{}",
            e.message
        );
        let _ = fs::set_permissions(&dir.0, fs::Permissions::from_mode(0o755));
    }

    fn current_umask() -> u32 {
        let status = fs::read_to_string("/proc/self/status").unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("Umask:"))
            .map(|v| u32::from_str_radix(v.trim(), 8).unwrap())
            .unwrap()
    }
}

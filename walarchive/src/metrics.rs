//! Counters of `wal-push` and `wal-fetch`, kept beside the WAL they move.
//!
//! Each call is its own short process, so nothing resident can count; PostgreSQL's
//! `pg_stat_archiver` counts archive_command's outcomes but nothing counts restores, bytes or
//! time spent. Each call therefore adds its outcome to a small JSON file in the `pg_wal`
//! directory it was given (`pg_wal/walarchive-metrics.json`), under a file lock, with a
//! write-then-rename so a reader never sees half a file. `status --pgdata` reads it. A
//! failure to count never fails an archive or a restore: it is only logged.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Name of the counters file in `pg_wal`.
pub const FILE_NAME: &str = "walarchive-metrics.json";
const LOCK_NAME: &str = "walarchive-metrics.lock";

/// Cumulative counters since the file was created.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Counters {
    /// Files newly archived.
    pub push_total: u64,
    /// Pushes of files that were already archived with the same content.
    pub push_already_archived_total: u64,
    /// Pushes that failed.
    pub push_errors_total: u64,
    /// Uncompressed bytes archived.
    pub push_bytes_total: u64,
    /// Bytes stored for them (compressed, with headers).
    pub push_stored_bytes_total: u64,
    /// Seconds spent in pushes (successful or not).
    pub push_seconds_total: f64,
    /// Files restored.
    pub fetch_total: u64,
    /// Fetches of files the repository does not have.
    pub fetch_not_found_total: u64,
    /// Fetches that failed otherwise.
    pub fetch_errors_total: u64,
    /// Of those, storage failures on a standby, answered "not available" so that PostgreSQL
    /// kept waiting (a store outage a standby is riding out).
    pub fetch_standby_waits_total: u64,
    /// Bytes restored.
    pub fetch_bytes_total: u64,
    /// Seconds spent in fetches.
    pub fetch_seconds_total: f64,
    /// The last error, one line.
    pub last_error: Option<String>,
    /// When it happened (RFC 3339, UTC).
    pub last_error_time: Option<String>,
    /// The last WAL segment restored during archive recovery (`recovery.signal`; never on a
    /// standby): how far a point-in-time restore has come.
    pub last_restored: Option<String>,
    /// When it was restored (RFC 3339, UTC).
    pub last_restored_time: Option<String>,
}

/// The `pg_wal` directory a WAL path (PostgreSQL's `%p`, e.g. `pg_wal/RECOVERYXLOG`) is in,
/// when it is one: counters are kept only there, never beside arbitrary files.
pub fn dir_for(wal_path: &Path) -> Option<PathBuf> {
    let parent = wal_path.parent()?;
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    // The path as given first: a pg_wal that is a symlink (`initdb --waldir`) resolves to
    // a directory with another name.
    if parent.file_name().is_some_and(|n| n == "pg_wal") && parent.is_dir() {
        return Some(parent.to_path_buf());
    }
    let canonical = parent.canonicalize().ok()?;
    (canonical.file_name()? == "pg_wal").then_some(canonical)
}

/// Reads the counters in `pg_wal` directory `dir`, if any.
pub fn read(dir: &Path) -> Option<Counters> {
    let text = std::fs::read_to_string(dir.join(FILE_NAME)).ok()?;
    serde_json::from_str(&text).ok()
}

/// Applies `change` to the counters in `dir`, under a lock.
pub fn update(dir: &Path, change: impl FnOnce(&mut Counters)) -> std::io::Result<()> {
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(LOCK_NAME))?;
    lock.lock()?;
    let path = dir.join(FILE_NAME);
    let mut counters = match File::open(&path) {
        Ok(mut f) => {
            let mut text = String::new();
            f.read_to_string(&mut text)?;
            serde_json::from_str(&text).unwrap_or_default()
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Counters::default(),
        Err(e) => return Err(e),
    };
    change(&mut counters);
    let tmp = dir.join(format!(".{FILE_NAME}.tmp"));
    let mut f = File::create(&tmp)?;
    f.write_all(&serde_json::to_vec_pretty(&counters).expect("counters serialize"))?;
    drop(f);
    std::fs::rename(&tmp, &path)?;
    lock.unlock()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_under_pg_wal_only() {
        let d = tempfile::tempdir().unwrap();
        let wal = d.path().join("pg_wal");
        std::fs::create_dir(&wal).unwrap();
        assert_eq!(
            dir_for(&wal.join("000000010000000000000001")),
            Some(wal.clone())
        );
        assert_eq!(dir_for(&d.path().join("x")), None);
        // initdb --waldir: pg_wal is a symlink to a directory with another name.
        let elsewhere = d.path().join("wal-disk");
        std::fs::create_dir(&elsewhere).unwrap();
        let data = d.path().join("data");
        std::fs::create_dir(&data).unwrap();
        std::os::unix::fs::symlink(&elsewhere, data.join("pg_wal")).unwrap();
        assert_eq!(
            dir_for(&data.join("pg_wal/000000010000000000000001")),
            Some(data.join("pg_wal"))
        );
        for _ in 0..3 {
            update(&wal, |c| {
                c.push_total += 1;
                c.push_bytes_total += 10;
            })
            .unwrap();
        }
        let c = read(&wal).unwrap();
        assert_eq!((c.push_total, c.push_bytes_total), (3, 30));
        std::fs::write(wal.join(FILE_NAME), "garbage").unwrap();
        update(&wal, |c| c.fetch_total += 1).unwrap();
        assert_eq!(
            read(&wal).unwrap().fetch_total,
            1,
            "a damaged file starts again"
        );
    }
}

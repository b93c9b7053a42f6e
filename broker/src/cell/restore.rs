//! Nodes bootstrapped from an archive (clones): how their restore goes, and when their
//! Patroni must not be restarted.
//!
//! While Patroni's custom bootstrap restores and replays, PostgreSQL answers no query
//! (Patroni forces `hot_standby = off`), so the status is read from files only: the
//! progress document of `backup-fetch --progress-file`, walarchive's counters in `pg_wal`
//! (`last_restored`), and, after a failure, `restore.failed` (written by the bootstrap
//! script) or PostgreSQL's `FATAL` line in `patroni.log`.
//!
//! A failed bootstrap makes Patroni rename the data directory to `data.failed`, remove the
//! `initialize` key and exit. Restarting it would bootstrap again, and fail again, forever
//! (design R1): such a node stays stopped until the broker removes it.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use super::client::{RestoreProgress, RestoreReplay, RestoreStatus};
use crate::patroni::bootstrap::{RESTORE_FAILED_FILE, RESTORE_PROGRESS_FILE};

/// What Patroni logs when it starts the custom bootstrap.
const BOOTSTRAP_STARTED: &str = "Running custom bootstrap script";
/// How much of the end of `patroni.log` is searched for the failure.
const LOG_TAIL_BYTES: u64 = 256 * 1024;

/// Whether the bootstrap of the node in `node_dir` failed for good: the script's
/// `restore.failed`, or Patroni's `data.failed` (PostgreSQL refused to start on the
/// restored directory, e.g. "recovery ended before configured recovery target was reached").
pub(super) fn bootstrap_failed(node_dir: &Path) -> bool {
    node_dir.join(RESTORE_FAILED_FILE).exists() || node_dir.join("data.failed").exists()
}

/// The restore status of the node in `node_dir`.
pub(super) fn status(node_dir: &Path) -> RestoreStatus {
    let progress = std::fs::read(node_dir.join(RESTORE_PROGRESS_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice::<RestoreProgress>(&b).ok());
    // Patroni renames a data directory it failed to bootstrap to data.failed.
    let replay = ["data", "data.failed"]
        .iter()
        .find_map(|d| walarchive::metrics::read(&node_dir.join(d).join("pg_wal")))
        .and_then(|c| {
            Some(RestoreReplay {
                last_restored: c.last_restored?,
                restored_at: c.last_restored_time,
            })
        });
    let failed = bootstrap_failed(node_dir).then(|| failure(node_dir));
    RestoreStatus {
        progress,
        replay,
        failed,
    }
}

/// Why the bootstrap failed, in a line or a few.
fn failure(node_dir: &Path) -> String {
    if let Ok(bytes) = std::fs::read(node_dir.join(RESTORE_FAILED_FILE)) {
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) {
            let status = v.get("status").and_then(|s| s.as_i64()).unwrap_or(-1);
            let stderr = v.get("stderr").and_then(|s| s.as_str()).unwrap_or("");
            return format!(
                "walarchive backup-fetch exited with status {status}: {}",
                stderr.trim()
            );
        }
        return "the restore failed (restore.failed is unreadable)".into();
    }
    let log = log_tail(&node_dir.join("patroni.log"));
    last_fatal(&log).unwrap_or_else(|| {
        "PostgreSQL did not start on the restored data directory (no FATAL line in the log)".into()
    })
}

/// The end of a log file, as text.
fn log_tail(path: &Path) -> String {
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL_BYTES)));
    let mut bytes = Vec::new();
    let _ = f.read_to_end(&mut bytes);
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The last `FATAL:` line after the last start of the custom bootstrap, from `FATAL:` on,
/// leaving out the refusals of connections while the server was not up.
fn last_fatal(log: &str) -> Option<String> {
    let after = log.rfind(BOOTSTRAP_STARTED).map_or(log, |i| &log[i..]);
    after
        .lines()
        .filter_map(|l| l.find("FATAL:").map(|i| l[i..].trim().to_string()))
        .rfind(|l| !l.contains("the database system is"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fatal_line_of_the_last_bootstrap() {
        let log = "\
2026-12-07 10:00:00 INFO: Running custom bootstrap script: /n/restore-bootstrap.sh
2026-12-07 10:00:01 [1] FATAL:  recovery ended before configured recovery target was reached (old)
2026-12-07 10:05:00 INFO: Running custom bootstrap script: /n/restore-bootstrap.sh
2026-12-07 10:05:02 [7] FATAL:  the database system is starting up
2026-12-07 10:05:03 [8] FATAL:  recovery ended before configured recovery target was reached
2026-12-07 10:05:03 [9] LOG:  startup process (PID 8) exited with exit code 1
2026-12-07 10:05:04 [10] FATAL:  the database system is shutting down
";
        assert_eq!(
            last_fatal(log).as_deref(),
            Some("FATAL:  recovery ended before configured recovery target was reached")
        );
        assert_eq!(last_fatal("INFO: all good\n"), None);
    }

    #[test]
    fn status_from_files() {
        let d = tempfile::tempdir().unwrap();
        let n = d.path();
        assert_eq!(status(n), RestoreStatus::default());
        std::fs::write(
            n.join(RESTORE_PROGRESS_FILE),
            r#"{"backup":"b1","bytes_done":5,"bytes_total":9,"done":false}"#,
        )
        .unwrap();
        std::fs::create_dir_all(n.join("data/pg_wal")).unwrap();
        walarchive::metrics::update(&n.join("data/pg_wal"), |c| {
            c.last_restored = Some("000000010000000000000005".into());
        })
        .unwrap();
        let s = status(n);
        assert_eq!(s.progress.unwrap().bytes_done, 5);
        assert_eq!(s.replay.unwrap().last_restored, "000000010000000000000005");
        assert_eq!(s.failed, None);
        assert!(!bootstrap_failed(n));
        std::fs::write(
            n.join(RESTORE_FAILED_FILE),
            r#"{"status": 8, "stderr": "walarchive: object damaged\n"}"#,
        )
        .unwrap();
        assert!(bootstrap_failed(n));
        assert_eq!(
            status(n).failed.as_deref(),
            Some("walarchive backup-fetch exited with status 8: walarchive: object damaged")
        );
    }
}

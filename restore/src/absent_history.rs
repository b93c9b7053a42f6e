//! Evidence that a timeline history file is absent from the repository, for a standby that
//! must answer `restore_command` during a store outage.
//!
//! A standby waits out an outage by answering "not available" (status 1) for segments: it
//! never promotes by itself, so that answer cannot end a recovery early. History files are
//! different: at promotion PostgreSQL probes `N.history` upwards (findNewestTimeLine) and
//! takes the first timeline whose history file is "not available" as free. Guessing "absent"
//! during an outage could hand the promoted server a timeline the archive already holds. So a
//! history file answers 1 only on a definitive answer from the store, or, on a standby during
//! an outage, when the store itself said earlier that it has no such file: the names the
//! store answered "not found" for are recorded here (`pg_wal/.walarchive/absent-history`,
//! one name a line, replaced atomically) and a name is dropped as soon as it is found.
//! A record that cannot be read or written only ever makes the answer stricter (status 207).

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use walarchive::WalFileName;

/// Where the record lives, relative to the data directory.
pub const RECORD: &str = "pg_wal/.walarchive/absent-history";

/// The record of the data directory `data_dir`, if that is a data directory (has `pg_wal`).
fn record_path(data_dir: &Path) -> Option<PathBuf> {
    data_dir
        .join("pg_wal")
        .is_dir()
        .then(|| data_dir.join(RECORD))
}

/// The history file names recorded as absent (an unreadable record holds none).
fn read(path: &Path) -> BTreeSet<String> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return BTreeSet::new(),
        Err(e) => {
            tracing::warn!("cannot read {}: {e}", path.display());
            return BTreeSet::new();
        }
    };
    text.lines()
        .map(str::trim)
        .filter(|n| matches!(n.parse::<WalFileName>(), Ok(WalFileName::History(_))))
        .map(str::to_string)
        .collect()
}

/// Replaces the record with `names` (a temporary file, fsynced, renamed into place).
fn write(path: &Path, names: &BTreeSet<String>) -> std::io::Result<()> {
    let dir = path.parent().expect("the record is in a directory");
    fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".absent-history.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = fs::File::create(&tmp)?;
        for n in names {
            writeln!(f, "{n}")?;
        }
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Records that the store answered "not found" for history file `name`.
pub fn record(data_dir: &Path, name: &str) {
    let Some(path) = record_path(data_dir) else {
        return;
    };
    let mut names = read(&path);
    if names.insert(name.to_string()) {
        if let Err(e) = write(&path, &names) {
            tracing::warn!("cannot record {name} as absent in {}: {e}", path.display());
        }
    }
}

/// Drops `name` from the record: it was found. When the record cannot be rewritten it is
/// removed, since a stale "absent" is the one answer that must never be given.
pub fn forget(data_dir: &Path, name: &str) {
    let Some(path) = record_path(data_dir) else {
        return;
    };
    let mut names = read(&path);
    if !names.remove(name) {
        return;
    }
    if let Err(e) = write(&path, &names) {
        tracing::warn!(
            "cannot drop {name} from {}: {e}; removing the record",
            path.display()
        );
        if let Err(e) = fs::remove_file(&path) {
            tracing::error!(
                "cannot remove {} either: {e}; remove it by hand (it says {name} is absent from the repository, which is no longer true)",
                path.display()
            );
        }
    }
}

/// Whether the store said earlier that it has no history file `name`.
pub fn recorded(data_dir: &Path, name: &str) -> bool {
    record_path(data_dir).is_some_and(|p| read(&p).contains(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_forgets_names_in_a_data_directory_only() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path();
        // Not a data directory: nothing is written.
        record(data, "00000002.history");
        assert!(!recorded(data, "00000002.history"));
        assert!(!data.join(".walarchive").exists() && !data.join("pg_wal").exists());
        fs::create_dir(data.join("pg_wal")).unwrap();
        record(data, "00000002.history");
        record(data, "00000003.history");
        assert!(recorded(data, "00000002.history") && recorded(data, "00000003.history"));
        assert!(!recorded(data, "00000004.history"));
        forget(data, "00000002.history");
        assert!(!recorded(data, "00000002.history") && recorded(data, "00000003.history"));
        assert_eq!(
            fs::read_to_string(data.join(RECORD)).unwrap(),
            "00000003.history\n"
        );
        // Junk in the record is no evidence of anything.
        fs::write(data.join(RECORD), "../x\n00000005.history\nnot-a-name\n").unwrap();
        assert!(recorded(data, "00000005.history") && !recorded(data, "../x"));
        assert_eq!(
            fs::read_dir(data.join("pg_wal/.walarchive"))
                .unwrap()
                .count(),
            1
        );
    }
}

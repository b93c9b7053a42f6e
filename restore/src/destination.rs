//! The data directory a restore writes, and what `backup-fetch --force` may replace.
//!
//! A restore is asked to replace one thing: the contents of the destination data directory.
//! So, before anything is written:
//!
//! - a directory holding a `postmaster.pid` is refused, whatever its PID says (as pgBackRest
//!   does): a live PID may be a server, a dead one says nothing about a server on another host
//!   sharing the directory, and a reused PID says nothing at all. Removing a stale
//!   `postmaster.pid` is a one-line, deliberate act;
//! - `--force` replaces only a PostgreSQL data directory (`PG_VERSION` and `global/pg_control`);
//!   any other non-empty directory is refused, so a mistyped path cannot empty `/home/x`;
//! - nothing is deleted while the restore may still fail: the directory's entries are moved
//!   (renamed, on the same file system, symlinks as symlinks, so a tablespace link in
//!   `pg_tblspc` or a `pg_wal` on another disk is never followed) into
//!   `DEST/.walarchive-restore/old`, and deleted only once the restored data directory is
//!   complete and durable. A restore that fails removes what it wrote and puts them back: the
//!   directory is as it was found. If even that fails, the error says where they are.
//!
//! `DEST/.walarchive-restore` exists only while a restore runs: a process killed in between
//! leaves it, and the next `backup-fetch` refuses to touch a directory holding the previous
//! contents of another (it cannot know whether what is beside them was used since) and says
//! how to resolve it. Leftovers of an interrupted restore into an empty directory are replaced
//! with `--force`, but the marker vouches only for what a restore writes: every other entry
//! must be a name the backup being restored has at the top of its data directory (or one
//! that restore writes itself: `backup_label`, the signal files...), so a marker left in (or
//! copied into) a directory never lets `--force` empty what is not a data directory. Anything
//! else is refused, naming the entry. The marker must hold nothing but its empty `old`.
//! Tablespace directories are never replaced: they must be missing or empty.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use walarchive::backup::{RESTORE_DONE_DIR, RESTORE_WORK_DIR};

use crate::FetchError;

/// The destination data directory of a restore in progress.
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    /// Directories this restore created (the destination and missing parents), outermost
    /// first: removed again when it fails.
    created: Vec<PathBuf>,
    /// The destination's mode before the restore set it to 0700.
    mode: Option<u32>,
    /// Entries moved into `.walarchive-restore/old`.
    moved: Vec<OsString>,
}

fn io_err(path: &Path, source: std::io::Error) -> FetchError {
    FetchError::Write {
        path: path.to_path_buf(),
        source,
    }
}

fn refused(msg: String) -> FetchError {
    FetchError::Refused(msg)
}

impl DataDir {
    /// Checks that `path` may be restored into (see the module documentation) and prepares
    /// it: created (0700) when missing, its contents moved aside when `force` replaces a data
    /// directory. `restored` holds the top-level names the restore writes (the leftovers of
    /// an interrupted restore may be only those). Nothing is changed when this fails.
    pub fn prepare(
        path: &Path,
        force: bool,
        restored: &BTreeSet<OsString>,
    ) -> Result<DataDir, FetchError> {
        let shown = path.display();
        let entries = match std::fs::read_dir(path) {
            Ok(rd) => {
                let mut names = Vec::new();
                for e in rd {
                    names.push(e.map_err(|e| io_err(path, e))?.file_name());
                }
                names.sort();
                names
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return DataDir::create(path);
            }
            Err(e) => return Err(io_err(path, e)),
        };
        if !entries.is_empty() {
            check_no_postmaster(path)?;
        }
        let work = path.join(RESTORE_WORK_DIR);
        if entries.iter().any(|n| n == RESTORE_WORK_DIR) {
            let old = work.join("old");
            let keeps_old = std::fs::read_dir(&old)
                .map(|mut rd| rd.next().is_some())
                .unwrap_or(false);
            let marker_ok = std::fs::read_dir(&work)
                .map(|rd| {
                    rd.flatten()
                        .all(|e| e.file_name() == "old" && e.path().is_dir())
                })
                .unwrap_or(false);
            if keeps_old {
                return Err(refused(format!(
                    "{shown} holds an interrupted walarchive restore, and its previous contents \
                     are in {}: move them back (or delete them) and remove {}, then run \
                     backup-fetch again",
                    old.display(),
                    work.display()
                )));
            }
            if !marker_ok {
                return Err(refused(format!(
                    "{shown} holds {}, which is not what an interrupted walarchive restore \
                     leaves (an empty directory 'old' only): look at it, remove it yourself if \
                     nothing in it is needed, then run backup-fetch again",
                    work.display()
                )));
            }
            if !force {
                return Err(refused(format!(
                    "{shown} holds an interrupted walarchive restore ({} exists): use --force \
                     to replace it",
                    work.display()
                )));
            }
            let foreign = entries.iter().find(|n| {
                *n != RESTORE_WORK_DIR && *n != RESTORE_DONE_DIR && !restored.contains(*n)
            });
            if let Some(name) = foreign {
                return Err(refused(format!(
                    "{shown} holds an interrupted walarchive restore ({} exists), but also {}, \
                     which that restore did not write: --force replaces only a data directory \
                     or a restore's own leftovers; move it away (or restore elsewhere), then \
                     run backup-fetch again",
                    work.display(),
                    path.join(name).display()
                )));
            }
        } else if !entries.is_empty() {
            if !force {
                return Err(FetchError::DestinationNotEmpty(path.to_path_buf()));
            }
            if !is_data_directory(path) {
                return Err(refused(format!(
                    "{shown} is not empty and is not a PostgreSQL data directory (it has no \
                     PG_VERSION and global/pg_control): --force only replaces a data directory; \
                     empty it yourself, or restore elsewhere"
                )));
            }
        }
        let mode = std::fs::metadata(path)
            .map_err(|e| io_err(path, e))?
            .permissions()
            .mode()
            & 0o7777;
        let mut dir = DataDir {
            path: path.to_path_buf(),
            created: Vec::new(),
            mode: Some(mode),
            moved: Vec::new(),
        };
        dir.move_aside(&entries)?;
        Ok(dir)
    }

    /// A missing destination: created 0700, with its missing parents.
    fn create(path: &Path) -> Result<DataDir, FetchError> {
        let mut missing = Vec::new();
        let mut p = path.to_path_buf();
        while !p.exists() {
            missing.push(p.clone());
            if !p.pop() {
                break;
            }
        }
        missing.reverse();
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
            .map_err(|e| io_err(path, e))?;
        let dir = DataDir {
            path: path.to_path_buf(),
            created: missing,
            mode: None,
            moved: Vec::new(),
        };
        if let Err(e) = dir.make_work_dir() {
            dir.remove_created();
            return Err(e);
        }
        Ok(dir)
    }

    fn work(&self) -> PathBuf {
        self.path.join(RESTORE_WORK_DIR)
    }

    fn old(&self) -> PathBuf {
        self.work().join("old")
    }

    fn make_work_dir(&self) -> Result<(), FetchError> {
        let old = self.old();
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&old)
            .map_err(|e| io_err(&old, e))
    }

    /// Moves `entries` (the destination's, sorted) into `.walarchive-restore/old`, leaving
    /// the destination empty but for that directory; undoes the moves when one fails.
    fn move_aside(&mut self, entries: &[OsString]) -> Result<(), FetchError> {
        // A restore interrupted into an empty directory left only its own files and its
        // marker with nothing in it (the caller checked): the marker is this restore's now,
        // and the files go like the rest.
        if entries.iter().any(|n| n == RESTORE_WORK_DIR) {
            let (old, work) = (self.old(), self.work());
            match std::fs::remove_dir(&old) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io_err(&old, e)),
                _ => {}
            }
            std::fs::remove_dir(&work).map_err(|e| io_err(&work, e))?;
        }
        self.make_work_dir()?;
        let old = self.old();
        for name in entries.iter().filter(|n| *n != RESTORE_WORK_DIR) {
            let name = name.clone();
            let from = self.path.join(&name);
            if let Err(e) = std::fs::rename(&from, old.join(&name)) {
                let undone = self.put_back();
                let _ = std::fs::remove_dir(&old);
                let _ = std::fs::remove_dir(self.work());
                return Err(match undone {
                    Ok(()) => refused(format!(
                        "cannot move {} aside ({e}; a mount point?): nothing was changed in {}",
                        from.display(),
                        self.path.display()
                    )),
                    Err(u) => io_err(
                        &from,
                        std::io::Error::other(format!(
                            "{e}; and moving back what was moved aside failed ({u}): the previous \
                         contents are partly in {}",
                            old.display()
                        )),
                    ),
                });
            }
            self.moved.push(name);
        }
        sync_dir(&self.path)?;
        if !self.moved.is_empty() {
            tracing::warn!(
                "--force: replacing the data directory {} ({} entries moved aside into {}, \
                 deleted once the restore is complete)",
                self.path.display(),
                self.moved.len(),
                old.display()
            );
        }
        Ok(())
    }

    /// Moves the entries moved aside back into the destination.
    fn put_back(&mut self) -> std::io::Result<()> {
        let old = self.old();
        while let Some(name) = self.moved.last() {
            std::fs::rename(old.join(name), self.path.join(name))?;
            self.moved.pop();
        }
        Ok(())
    }

    /// The restore is complete and durable: deletes what it replaced and the marker.
    pub fn commit(self) -> Result<(), FetchError> {
        // Renamed first: from then on the directory no longer reads as an interrupted
        // restore, even if the deletion below is cut short.
        let work = self.work();
        let trash = self.path.join(RESTORE_DONE_DIR);
        std::fs::rename(&work, &trash).map_err(|e| io_err(&work, e))?;
        sync_dir(&self.path)?;
        if let Err(e) = std::fs::remove_dir_all(&trash) {
            tracing::warn!(
                "cannot delete the replaced contents of {} ({e}): remove {} yourself",
                self.path.display(),
                trash.display()
            );
        }
        Ok(())
    }

    /// The restore failed with `error`: removes what it wrote and puts back what was there.
    /// Returns the error to report (naming where the previous contents are, if they could
    /// not be put back).
    pub fn roll_back(mut self, error: FetchError) -> FetchError {
        let undone = self.undo();
        match undone {
            Ok(()) => {
                tracing::info!(
                    "the failed restore's files were removed: {} is as it was",
                    self.path.display()
                );
                error
            }
            Err(e) => FetchError::NotUndone {
                error: Box::new(error),
                detail: format!(
                    "and the failed restore could not be undone ({e}){}",
                    if self.moved.is_empty() {
                        String::new()
                    } else {
                        format!(
                            ": the previous contents of {} are in {}",
                            self.path.display(),
                            self.old().display()
                        )
                    }
                ),
            },
        }
    }

    fn undo(&mut self) -> std::io::Result<()> {
        if !self.created.is_empty() {
            // Ours from the start: removed, with the parents this restore created.
            std::fs::remove_dir_all(&self.path)?;
            self.remove_created();
            return Ok(());
        }
        for e in std::fs::read_dir(&self.path)? {
            let e = e?;
            if e.file_name() == RESTORE_WORK_DIR {
                continue;
            }
            let p = e.path();
            // Not followed: a symlink is removed, never what it points to.
            if e.file_type()?.is_dir() {
                std::fs::remove_dir_all(&p)?;
            } else {
                std::fs::remove_file(&p)?;
            }
        }
        self.put_back()?;
        std::fs::remove_dir(self.old())?;
        std::fs::remove_dir(self.work())?;
        if let Some(mode) = self.mode {
            std::fs::set_permissions(&self.path, std::fs::Permissions::from_mode(mode))?;
        }
        sync_dir(&self.path).map_err(|e| std::io::Error::other(e.to_string()))
    }

    /// Removes the (empty) directories this restore created, innermost first.
    fn remove_created(&self) {
        for d in self.created.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// Refuses a directory holding `postmaster.pid` (see the module documentation).
fn check_no_postmaster(dir: &Path) -> Result<(), FetchError> {
    let pid_file = dir.join("postmaster.pid");
    let text = match std::fs::read_to_string(&pid_file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        // There, but unreadable: still a server's.
        Err(_) => String::new(),
    };
    let pid = text
        .lines()
        .next()
        .and_then(|l| l.trim().parse::<i32>().ok());
    Err(refused(match pid {
        Some(pid) if pid > 0 && process_exists(pid) => format!(
            "a PostgreSQL server (PID {pid}, running) holds {}: stop it before restoring into \
             its data directory",
            dir.display()
        ),
        Some(pid) => format!(
            "{} exists (PID {pid}, not running here): if no server uses {} (on this host or \
             another one sharing it), remove postmaster.pid and run backup-fetch again",
            pid_file.display(),
            dir.display()
        ),
        None => format!(
            "{} exists: a PostgreSQL server may be using {}; if none does, remove \
             postmaster.pid and run backup-fetch again",
            pid_file.display(),
            dir.display()
        ),
    }))
}

/// Whether a process with this ID exists (one we may not signal exists too).
fn process_exists(pid: i32) -> bool {
    use nix::errno::Errno;
    if pid <= 0 {
        return false;
    }
    // Signal 0: only checks for the process; nothing is sent.
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
        Ok(()) => true,
        Err(e) => e == Errno::EPERM,
    }
}

/// Whether `dir` is a PostgreSQL data directory: `PG_VERSION` and `global/pg_control`.
fn is_data_directory(dir: &Path) -> bool {
    let file = |rel: &str| std::fs::symlink_metadata(dir.join(rel)).is_ok_and(|m| m.is_file());
    file("PG_VERSION") && file("global/pg_control")
}

fn sync_dir(dir: &Path) -> Result<(), FetchError> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| io_err(dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data_dir(root: &Path) -> PathBuf {
        let d = root.join("data");
        std::fs::create_dir_all(d.join("global")).unwrap();
        std::fs::create_dir_all(d.join("base/1")).unwrap();
        std::fs::write(d.join("PG_VERSION"), "15\n").unwrap();
        std::fs::write(d.join("global/pg_control"), "control").unwrap();
        std::fs::write(d.join("base/1/1234"), "table").unwrap();
        d
    }

    /// The top-level names of the backups these tests restore.
    fn restored() -> BTreeSet<OsString> {
        ["PG_VERSION", "base", "global", "pg_wal"]
            .into_iter()
            .map(OsString::from)
            .collect()
    }

    fn listing(dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let e = e.unwrap();
                let rel = e.path().strip_prefix(dir).unwrap().display().to_string();
                if e.file_type().unwrap().is_dir() {
                    stack.push(e.path());
                }
                out.push(rel);
            }
        }
        out.sort();
        out
    }

    #[test]
    fn a_failed_forced_restore_puts_everything_back() {
        let t = tempfile::tempdir().unwrap();
        let d = data_dir(t.path());
        // A tablespace link whose target must never be entered.
        let ts = t.path().join("ts");
        std::fs::create_dir_all(ts.join("PG_15_1")).unwrap();
        std::fs::write(ts.join("PG_15_1/keep"), "tablespace").unwrap();
        std::fs::create_dir(d.join("pg_tblspc")).unwrap();
        std::os::unix::fs::symlink(&ts, d.join("pg_tblspc/16384")).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o750)).unwrap();
        let before = listing(&d);

        let dir = DataDir::prepare(&d, true, &restored()).unwrap();
        assert_eq!(
            listing(&d)
                .iter()
                .filter(|p| !p.starts_with(RESTORE_WORK_DIR))
                .count(),
            0
        );
        // The restore writes a few things, then fails.
        std::fs::create_dir(d.join("base")).unwrap();
        std::fs::write(d.join("base/new"), "partial").unwrap();
        std::fs::write(d.join("PG_VERSION"), "16\n").unwrap();
        let e = dir.roll_back(FetchError::BadBackup("boom".into()));
        assert_eq!(e.to_string(), "the backup is damaged: boom");
        assert_eq!(listing(&d), before);
        assert_eq!(
            std::fs::read_to_string(d.join("PG_VERSION")).unwrap(),
            "15\n"
        );
        assert_eq!(
            std::fs::metadata(&d).unwrap().permissions().mode() & 0o777,
            0o750
        );
        assert_eq!(
            std::fs::read_to_string(ts.join("PG_15_1/keep")).unwrap(),
            "tablespace"
        );

        // A successful one deletes the old contents, never the tablespace's target.
        let dir = DataDir::prepare(&d, true, &restored()).unwrap();
        std::fs::write(d.join("PG_VERSION"), "16\n").unwrap();
        dir.commit().unwrap();
        assert_eq!(listing(&d), vec!["PG_VERSION".to_string()]);
        assert_eq!(
            std::fs::read_to_string(ts.join("PG_15_1/keep")).unwrap(),
            "tablespace"
        );
    }

    #[test]
    fn refusals_change_nothing() {
        let t = tempfile::tempdir().unwrap();
        // Not a data directory.
        let other = t.path().join("other");
        std::fs::create_dir_all(other.join("important")).unwrap();
        std::fs::write(other.join("important/file.txt"), "precious").unwrap();
        for force in [false, true] {
            let e = DataDir::prepare(&other, force, &restored()).unwrap_err();
            assert_eq!(e.kind(), walarchive::ErrorKind::BadInput, "{e}");
        }
        let e = DataDir::prepare(&other, true, &restored())
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a PostgreSQL data directory"), "{e}");
        assert_eq!(listing(&other), vec!["important", "important/file.txt"]);

        // A postmaster.pid, with a live PID (ours), a dead one, or none readable.
        let d = data_dir(t.path());
        for (content, wanted) in [
            (
                format!("{}\n{}\n", std::process::id(), d.display()),
                "running",
            ),
            ("999999999\n".to_string(), "not running here"),
            ("garbage".to_string(), "may be using"),
        ] {
            std::fs::write(d.join("postmaster.pid"), &content).unwrap();
            let before = listing(&d);
            for force in [false, true] {
                let e = DataDir::prepare(&d, force, &restored()).unwrap_err();
                assert!(e.to_string().contains(wanted), "{e}");
                assert_eq!(e.kind(), walarchive::ErrorKind::BadInput);
                assert_eq!(listing(&d), before);
            }
        }
        std::fs::remove_file(d.join("postmaster.pid")).unwrap();

        // An interrupted restore that moved contents aside is left to the operator.
        std::fs::create_dir_all(d.join(RESTORE_WORK_DIR).join("old/base")).unwrap();
        let before = listing(&d);
        let e = DataDir::prepare(&d, true, &restored())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("interrupted walarchive restore") && e.contains("old"),
            "{e}"
        );
        assert_eq!(listing(&d), before);
    }

    #[test]
    fn missing_and_empty_destinations() {
        let t = tempfile::tempdir().unwrap();
        let deep = t.path().join("a/b/data");
        let dir = DataDir::prepare(&deep, false, &restored()).unwrap();
        assert_eq!(
            std::fs::metadata(&deep).unwrap().permissions().mode() & 0o777,
            0o700
        );
        std::fs::write(deep.join("x"), "partial").unwrap();
        dir.roll_back(FetchError::BadBackup("x".into()));
        assert!(!t.path().join("a").exists());

        // Killed mid-restore into an empty directory: --force replaces the leftovers.
        let empty = t.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        let _killed = DataDir::prepare(&empty, false, &restored()).unwrap();
        std::fs::write(empty.join("PG_VERSION"), "15\n").unwrap();
        let e = DataDir::prepare(&empty, false, &restored())
            .unwrap_err()
            .to_string();
        assert!(e.contains("--force"), "{e}");
        let dir = DataDir::prepare(&empty, true, &restored()).unwrap();
        std::fs::write(empty.join("PG_VERSION"), "16\n").unwrap();
        dir.commit().unwrap();
        assert_eq!(listing(&empty), vec!["PG_VERSION".to_string()]);
    }

    #[test]
    fn a_leftover_marker_never_lets_force_empty_what_a_restore_did_not_write() {
        let t = tempfile::tempdir().unwrap();
        // A directory that is not a data directory, with a restore's marker in it (a crashed
        // restore's, or copied there): --force refuses, naming what the restore did not write.
        let d = t.path().join("precious");
        std::fs::create_dir_all(d.join("important")).unwrap();
        std::fs::write(d.join("important/file.txt"), "precious").unwrap();
        std::fs::create_dir_all(d.join(".walarchive-restore/old")).unwrap();
        std::fs::write(d.join("PG_VERSION"), "15\n").unwrap();
        let before = listing(&d);
        let e = DataDir::prepare(&d, true, &restored())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("interrupted walarchive restore")
                && e.contains("important")
                && e.contains("did not write"),
            "{e}"
        );
        assert_eq!(listing(&d), before);
        assert_eq!(
            std::fs::read_to_string(d.join("important/file.txt")).unwrap(),
            "precious"
        );

        // A marker holding something else than its empty 'old': refused, with or without
        // --force, and never deleted.
        let m = t.path().join("marker");
        std::fs::create_dir_all(m.join(".walarchive-restore")).unwrap();
        std::fs::write(m.join(".walarchive-restore/notes.txt"), "mine").unwrap();
        std::fs::write(m.join("PG_VERSION"), "15\n").unwrap();
        let before = listing(&m);
        for force in [false, true] {
            let e = DataDir::prepare(&m, force, &restored())
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("not what an interrupted walarchive restore"),
                "{e}"
            );
            assert_eq!(listing(&m), before);
        }
    }
}

//! `backup-fetch --progress-file`: how far a restore is, for a program watching it.
//!
//! The service broker restores a clone's first node inside Patroni's custom bootstrap, where
//! nothing but files can tell it how far the restore is (no SQL while PostgreSQL is not up).
//! So backup-fetch rewrites a small JSON document (`{"backup", "bytes_done", "bytes_total",
//! "done"}`) at most once a second while it downloads, and once more at the end with
//! `done: true`; each write goes to a temporary file renamed over the old one, so a reader
//! never sees half a document. A failure to write it is logged, never fatal, except the last
//! write: a restore whose watcher would never learn it ended is reported as failed.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use walarchive::backup::Progress;

use crate::FetchError;

/// How often the document is rewritten while bytes arrive.
const EVERY: Duration = Duration::from_secs(1);

/// A [`Progress`] that writes the progress file and passes everything on to `inner`.
pub struct ProgressFile {
    path: PathBuf,
    backup: String,
    done: AtomicU64,
    total: AtomicU64,
    last_write: Mutex<Option<Instant>>,
    inner: Arc<dyn Progress>,
}

impl ProgressFile {
    /// Progress of restoring `backup`, written to `path`, also reported to `inner`.
    pub fn new(path: &Path, backup: &str, inner: Arc<dyn Progress>) -> Arc<ProgressFile> {
        Arc::new(ProgressFile {
            path: path.to_path_buf(),
            backup: backup.to_string(),
            done: AtomicU64::new(0),
            total: AtomicU64::new(0),
            last_write: Mutex::new(None),
            inner,
        })
    }

    /// The document as it stands.
    pub fn document(&self, done: bool) -> serde_json::Value {
        serde_json::json!({
            "backup": self.backup,
            "bytes_done": self.done.load(Ordering::Relaxed),
            "bytes_total": self.total.load(Ordering::Relaxed),
            "done": done,
        })
    }

    fn write(&self, done: bool) -> std::io::Result<()> {
        let name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = self.path.with_file_name(format!(".{name}.tmp"));
        std::fs::write(&tmp, self.document(done).to_string())?;
        std::fs::rename(&tmp, &self.path)
    }

    fn write_now(&self) {
        *self.last_write.lock().expect("progress lock") = Some(Instant::now());
        if let Err(e) = self.write(false) {
            tracing::warn!("cannot write {}: {e}", self.path.display());
        }
    }

    /// The restore is complete: the last document, with `done: true`.
    pub fn finish(&self) -> Result<(), FetchError> {
        self.write(true).map_err(|source| FetchError::Write {
            path: self.path.clone(),
            source,
        })
    }
}

impl Progress for ProgressFile {
    fn start(&self, total_bytes: u64) {
        self.total.store(total_bytes, Ordering::Relaxed);
        self.done.store(0, Ordering::Relaxed);
        self.inner.start(total_bytes);
        self.write_now();
    }

    fn advance(&self, bytes: u64) {
        self.done.fetch_add(bytes, Ordering::Relaxed);
        self.inner.advance(bytes);
        let due = self
            .last_write
            .lock()
            .expect("progress lock")
            .is_none_or(|t| t.elapsed() >= EVERY);
        if due {
            self.write_now();
        }
    }

    fn phase(&self, what: &str) {
        self.inner.phase(what);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use walarchive::backup::NoProgress;

    #[test]
    fn writes_whole_documents() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("restore-progress.json");
        let p = ProgressFile::new(&path, "20261207T020000Z", Arc::new(NoProgress));
        p.start(100);
        let read = || -> serde_json::Value {
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
        };
        assert_eq!(read()["bytes_total"], 100);
        assert_eq!(read()["done"], false);
        p.advance(60);
        p.advance(40);
        p.finish().unwrap();
        assert_eq!(
            read(),
            serde_json::json!({"backup": "20261207T020000Z", "bytes_done": 100,
                "bytes_total": 100, "done": true})
        );
        // Only the document is left: the temporary file was renamed.
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }
}

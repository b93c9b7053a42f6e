//! walarchive's read side: fetching WAL for PostgreSQL's `restore_command`.
//!
//! `restore_command`'s exit status is a three-way answer and getting it wrong loses data:
//! 0 means "restored", a small non-zero status means "not available" (PostgreSQL then ends
//! archive recovery and promotes), and only a status above 125 makes PostgreSQL abort. So
//! this crate distinguishes "the repository positively has no such object" from every other
//! failure (unreachable store, refused credentials, corrupt object, wrong URL): only the
//! first may ever end a recovery. A fetched file appears at its destination only after its
//! checksum is verified, through a rename, so a failed fetch leaves nothing behind.
//!
//! [`prefetch`] downloads the segments after the one asked for while PostgreSQL replays it,
//! and serves them from the local disk once they are verified again.
#![warn(missing_docs)]
// No unsafe code but one call: the write-back hint of `backup::start_writeback`
// (sync_file_range, which nix does not wrap) allows it for itself.
#![deny(unsafe_code)]

pub mod absent_history;
pub mod backup;
pub mod destination;
pub mod prefetch;
pub mod progress_file;
pub mod recovery;

use std::io::Write;
use std::path::{Path, PathBuf};

use walarchive::{ErrorKind, Repository, WalFileName};

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The repository exists and does not have this file.
    #[error("{0} is not in the repository")]
    NotFound(String),
    /// The destination cannot be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// Destination or temporary file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// No backup matches.
    #[error("{0}")]
    NoBackup(String),
    /// The recovery target cannot be reached from the repository's backups or WAL.
    #[error("{0}")]
    BadTarget(String),
    /// The restore destination is not empty.
    #[error("{} is not empty (use --force to replace a data directory, or --tablespace-map OID=DIR to restore a tablespace elsewhere)", .0.display())]
    DestinationNotEmpty(PathBuf),
    /// The destination may not be restored into (a server holds it, it is not a data
    /// directory, an interrupted restore left it): nothing was changed.
    #[error("{0}")]
    Refused(String),
    /// The backup's content does not match its manifest.
    #[error("the backup is damaged: {0}")]
    BadBackup(String),
    /// A restore failed and the destination could not be put back as it was.
    #[error("{error}; {detail}")]
    NotUndone {
        /// Why the restore failed.
        error: Box<FetchError>,
        /// What could not be undone, and where the previous contents are.
        detail: String,
    },
    /// Anything the engine reports: storage, corruption, configuration.
    #[error(transparent)]
    Core(#[from] walarchive::Error),
}

impl FetchError {
    /// The class of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            FetchError::NotFound(_) | FetchError::NoBackup(_) => ErrorKind::NotFound,
            FetchError::BadTarget(_)
            | FetchError::DestinationNotEmpty(_)
            | FetchError::Refused(_) => ErrorKind::BadInput,
            FetchError::NotUndone { error, .. } => error.kind(),
            FetchError::BadBackup(_) => ErrorKind::Corrupt,
            FetchError::Write { .. } => ErrorKind::LocalIo,
            FetchError::Core(e) => e.kind(),
        }
    }
}

/// Where a restored file came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// Downloaded from the repository for this request.
    Repository,
    /// Downloaded ahead into the prefetch directory and verified again ([`prefetch`]).
    Prefetch,
}

/// What a fetch restored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchReport {
    /// The file restored.
    pub name: WalFileName,
    /// Bytes written to the destination.
    pub len: u64,
    /// Where it came from.
    pub source: Source,
}

/// Restores WAL file `name` (PostgreSQL's `%f`) from `repo` to `dest` (`%p`).
pub async fn fetch_file(
    repo: &Repository,
    name: &str,
    dest: &Path,
) -> Result<FetchReport, FetchError> {
    let parsed: WalFileName = name.parse().map_err(walarchive::Error::from)?;
    let key = Repository::wal_key(&parsed);
    // The object and the descriptor at once: the descriptor (or, for wal-fetch in a data
    // directory, its pg_control: no GET) says what the object must be.
    let (got, descriptor) = tokio::join!(repo.get_decoded(&key), repo.cached_descriptor());
    let (header, raw) = match got {
        Ok(got) => got,
        Err(walarchive::Error::NotFound { .. }) => {
            // "Not found" ends a recovery, so it must be a real answer from a real
            // repository, not the symptom of a wrong URL or an emptied bucket: the
            // descriptor itself, not an identity taken from pg_control.
            descriptor?;
            repo.confirmed_descriptor().await?;
            return Err(FetchError::NotFound(name.to_string()));
        }
        Err(e) => return Err(e.into()),
    };
    let descriptor = descriptor?;
    // Nothing reaches PostgreSQL that is not what its name says: a bound object must be
    // this repository's, and the content (a segment's first page header: page address,
    // system identifier, segment size) must match the name and the repository, for objects
    // of every format version.
    repo.check_system(&key, &header).await?;
    walarchive::verify::check_fetched(repo, &parsed, &raw, &descriptor)?;
    let len = raw.len() as u64;
    let dest = dest.to_path_buf();
    tokio::task::spawn_blocking(move || write_atomically(&dest, &raw))
        .await
        .expect("write task does not panic")?;
    Ok(FetchReport {
        name: parsed,
        len,
        source: Source::Repository,
    })
}

/// Writes `content` to a temporary file beside `dest` and renames it into place. PostgreSQL
/// re-requests WAL after a crash, so the file is not fsynced.
fn write_atomically(dest: &Path, content: &[u8]) -> Result<(), FetchError> {
    let dir = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = dest.file_name().and_then(|n| n.to_str()).unwrap_or("wal");
    let tmp = dir.join(format!(
        ".{file_name}.walarchive-{}.tmp",
        std::process::id()
    ));
    let fail = |path: &Path, source| FetchError::Write {
        path: path.to_path_buf(),
        source,
    };
    let result = (|| {
        let mut f = std::fs::File::create(&tmp).map_err(|e| fail(&tmp, e))?;
        f.write_all(content).map_err(|e| fail(&tmp, e))?;
        drop(f);
        std::fs::rename(&tmp, dest).map_err(|e| fail(dest, e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;
    use object_store::path::Path as ObjPath;
    use std::sync::Arc;
    use walarchive::storage::Backend;
    use walarchive::{Compression, RetryPolicy};

    fn repo() -> Repository {
        Repository::with_store(
            Arc::new(InMemory::new()),
            ObjPath::from("p"),
            Backend::Local,
            "memory://t",
            RetryPolicy::default(),
            Compression::default(),
        )
    }

    #[tokio::test]
    async fn fetches_and_distinguishes_missing_repository() {
        let r = repo();
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("RECOVERYXLOG");
        // No descriptor: not "not found", a configuration failure.
        let e = fetch_file(&r, "00000002.history", &dest).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config, "{e}");
        let d = walarchive::Descriptor {
            format_version: 1,
            system_identifier: "1".into(),
            pg_version: Some(15),
            wal_page_magic: 0xD110,
            wal_segment_size: 1 << 20,
            created_at: 0,
            created_by: "test".into(),
        };
        r.ensure_descriptor(&d, "test").await.unwrap();
        let e = fetch_file(&r, "00000002.history", &dest).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
        r.put_new(
            "wal/history/00000002.history",
            b"1\t0/3000000\tno recovery target specified\n",
            Compression::Lz4,
        )
        .await
        .unwrap();
        let rep = fetch_file(&r, "00000002.history", &dest).await.unwrap();
        assert_eq!(rep.len, 41);
        assert_eq!(std::fs::read(&dest).unwrap().len(), 41);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary file left"
        );
        assert_eq!(
            fetch_file(&r, "RECOVERYXLOG", &dest)
                .await
                .unwrap_err()
                .kind(),
            ErrorKind::BadInput
        );
    }

    /// A segment of cluster `sysid`: a valid long page header for `name`, then a pattern.
    fn segment(name: &str, sysid: u64) -> Vec<u8> {
        let seg: walarchive::SegmentName = name.parse().unwrap();
        let size = 1u64 << 20;
        let mut b: Vec<u8> = (0..size as u32).map(|i| (i % 251) as u8).collect();
        b[..40].fill(0);
        b[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
        b[2..4].copy_from_slice(&0x0002u16.to_le_bytes());
        b[4..8].copy_from_slice(&seg.timeline.0.to_le_bytes());
        b[8..16].copy_from_slice(&seg.start_lsn(size).0.to_le_bytes());
        b[24..32].copy_from_slice(&sysid.to_le_bytes());
        b[32..36].copy_from_slice(&(size as u32).to_le_bytes());
        b[36..40].copy_from_slice(&8192u32.to_le_bytes());
        b
    }

    /// An intact object under the wrong name, or of another cluster, bound or written
    /// before binding: refused as corrupt (208 for wal-fetch), and nothing is written.
    #[tokio::test]
    async fn never_hands_postgresql_another_segment_or_another_clusters() {
        use object_store::ObjectStoreExt;
        use walarchive::format::{encode_as, Binding, DigestKind};
        let store = Arc::new(InMemory::new());
        let r = Repository::with_store(
            store.clone(),
            ObjPath::from("p"),
            Backend::Local,
            "memory://t",
            RetryPolicy::default(),
            Compression::default(),
        );
        r.ensure_descriptor(&walarchive::Descriptor::for_tests("1"), "t")
            .await
            .unwrap();
        let (n57, n58) = ("000000010000000000000057", "000000010000000000000058");
        let key = |n: &str| Repository::wal_key(&n.parse().unwrap());
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("RECOVERYXLOG");
        let refused = |e: FetchError, want: &str| {
            assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
            assert!(e.to_string().contains(want), "{want:?} not in {e}");
            assert_eq!(
                std::fs::read_dir(dir.path()).unwrap().count(),
                0,
                "nothing written"
            );
        };
        let put = |name: &str, raw: Vec<u8>, binding: Option<Binding>| {
            let (r, k) = (r.clone(), key(name));
            async move {
                r.delete(&k).await.unwrap();
                let o = encode_as(&raw, Compression::Lz4, DigestKind::Blake3, binding.as_ref());
                r.put_encoded(&k, o).await.unwrap();
            }
        };
        // ...57's intact object copied over ...58's (as a copy in the bucket would).
        put(n57, segment(n57, 1), Some(Binding::new(1, &key(n57)))).await;
        let bytes = store
            .get(&r.key(&key(n57)))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        store.put(&r.key(&key(n58)), bytes.into()).await.unwrap();
        let e = fetch_file(&r, n58, &dest).await.unwrap_err();
        refused(
            e,
            "it is the object of wal/00000001/00000000/000000010000000000000057, stored under another name",
        );
        // ...57's content, bound to 58's name: its page header says it is 57.
        put(n58, segment(n57, 1), Some(Binding::new(1, &key(n58)))).await;
        let e = fetch_file(&r, n58, &dest).await.unwrap_err();
        refused(
            e,
            "its first page is for LSN 0/5700000 but the name says the segment starts at 0/5800000",
        );
        // Another cluster's 58, bound to its repository.
        put(n58, segment(n58, 7), Some(Binding::new(7, &key(n58)))).await;
        let e = fetch_file(&r, n58, &dest).await.unwrap_err();
        refused(
            e,
            "belongs to the repository of system identifier 7, but this repository's is 1",
        );
        // Written before binding: the page header still tells.
        put(n58, segment(n57, 1), None).await;
        let e = fetch_file(&r, n58, &dest).await.unwrap_err();
        refused(e, "renamed or damaged");
        put(n58, segment(n58, 7), None).await;
        let e = fetch_file(&r, n58, &dest).await.unwrap_err();
        refused(e, "system identifier is 7, the repository's is 1");
        // The real one, bound or not, is served.
        for binding in [Some(Binding::new(1, &key(n58))), None] {
            put(n58, segment(n58, 1), binding).await;
            fetch_file(&r, n58, &dest).await.unwrap();
            assert_eq!(std::fs::read(&dest).unwrap(), segment(n58, 1));
            std::fs::remove_file(&dest).unwrap();
        }
    }
}

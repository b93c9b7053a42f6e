//! The push side of PostgreSQL's `archive_command` contract.
//!
//! PostgreSQL recycles a segment as soon as `archive_command` exits 0, so a push succeeds
//! only after the object is durably stored, and everything that could make a stored
//! segment useless is checked first: the name, the size, the page header (cluster, segment
//! size, page address) and the repository's descriptor. A file that fails any check is
//! refused with a reason instead of being archived, because archiving garbage silently is
//! how restores fail months later.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::format::{self, Sha256Digest};
use crate::repo::{Descriptor, PutOutcome, Repository, REPOSITORY_FORMAT};
use crate::wal::{is_valid_segment_size, WalFileName, WalPageHeader};
use crate::Error;

/// What a push did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushReport {
    /// The file pushed.
    pub name: WalFileName,
    /// Uncompressed size.
    pub raw_len: u64,
    /// Newly stored, or already there with the same content.
    pub outcome: PutOutcome,
    /// SHA-256 of the file's content (what the stored object holds).
    pub sha256: Sha256Digest,
}

/// Archives the WAL file at `path` (as PostgreSQL's `%p`) into `repo`.
pub async fn push_file(repo: &Repository, path: &Path) -> Result<PushReport, Error> {
    let (name, raw) = read_wal_file(path).await?;
    check_against_repository(repo, path, &name, &raw).await?;
    store(repo, name, raw).await
}

/// Reads the WAL file at `path`: its name must be a WAL file name and it must be a
/// non-empty regular file. Nothing is checked about its content yet.
pub async fn read_wal_file(path: &Path) -> Result<(WalFileName, Vec<u8>), Error> {
    let shown = path.display().to_string();
    let bad = |reason: String| Error::BadInput {
        path: shown.clone(),
        reason,
    };
    let file_name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| bad("has no file name".into()))?;
    let name: WalFileName = file_name.parse()?;

    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(bad("no such file".into()))
        }
        Err(source) => {
            return Err(Error::Io {
                context: format!("cannot read {shown}"),
                source,
            })
        }
    };
    if meta.is_dir() {
        return Err(bad("is a directory, not a WAL file".into()));
    }
    if !meta.is_file() {
        return Err(bad("is not a regular file".into()));
    }
    if meta.len() == 0 {
        return Err(bad("is empty".into()));
    }
    let owned = path.to_path_buf();
    let raw = tokio::task::spawn_blocking(move || std::fs::read(owned))
        .await
        .expect("read task does not panic")
        .map_err(|source| Error::Io {
            context: format!("cannot read {shown}"),
            source,
        })?;
    Ok((name, raw))
}

/// Checks a file that holds WAL pages (see [`check_segment`]) and that its cluster is the
/// repository's (creating the descriptor on the first push); returns the repository's
/// descriptor, or `None` for files without WAL pages (history and backup history files).
pub async fn check_against_repository(
    repo: &Repository,
    path: &Path,
    name: &WalFileName,
    raw: &[u8],
) -> Result<Option<Descriptor>, Error> {
    if !name.holds_wal_pages() {
        return Ok(None);
    }
    let wanted = check_segment(name, raw).map_err(|reason| Error::BadInput {
        path: path.display().to_string(),
        reason,
    })?;
    let stored = repo.ensure_descriptor(&wanted, &name.to_string()).await?;
    Ok(Some(stored))
}

/// Stores already checked content as WAL file `name`. Hashing and compression run on
/// tokio's blocking pool, so that several pushes in one process (see [`crate::pushahead`])
/// use every core while their uploads are in flight.
pub async fn store(
    repo: &Repository,
    name: WalFileName,
    raw: Vec<u8>,
) -> Result<PushReport, Error> {
    let compression = repo.compression;
    let raw_len = raw.len() as u64;
    // `raw` moves into the task and is freed there: only the encoded copy stays in memory
    // while it uploads.
    let encoded = tokio::task::spawn_blocking(move || format::encode(&raw, compression))
        .await
        .expect("encoding does not panic");
    let sha256 = encoded.header.sha256;
    let outcome = repo
        .put_encoded(&Repository::wal_key(&name), encoded)
        .await?;
    Ok(PushReport {
        name,
        raw_len,
        outcome,
        sha256,
    })
}

/// Checks that `raw` is a whole segment named `name` (size, long page header, page address
/// and timeline against the name), returning the cluster properties its page header declares.
pub fn check_segment(name: &WalFileName, raw: &[u8]) -> Result<Descriptor, String> {
    let len = raw.len() as u64;
    if !is_valid_segment_size(len) {
        return Err(format!(
            "is {len} bytes: not a whole WAL segment (segments are a power of two from 1 MiB to 1 GiB; truncated?)"
        ));
    }
    let header = WalPageHeader::parse(raw).map_err(|e| e.to_string())?;
    if u64::from(header.segment_size) != len {
        return Err(format!(
            "its page header says the segment size is {} bytes but the file has {len} (truncated or not a WAL segment)",
            header.segment_size
        ));
    }
    let seg = name
        .segment()
        .expect("files holding WAL pages name a segment");
    if !seg.fits_segment_size(len) {
        return Err(format!(
            "the name is out of range for {} MiB segments",
            len >> 20
        ));
    }
    let expected = seg.start_lsn(len);
    if header.page_address != expected {
        return Err(format!(
            "its first page is for LSN {} but the name says the segment starts at {expected} (renamed or damaged file)",
            header.page_address
        ));
    }
    // The first page of a new timeline's first segment is copied from the old timeline,
    // so the page's timeline may be lower than the name's, never higher.
    if header.timeline > seg.timeline {
        return Err(format!(
            "its first page is on timeline {} but the name says {}",
            header.timeline, seg.timeline
        ));
    }
    Ok(Descriptor {
        format_version: REPOSITORY_FORMAT,
        system_identifier: header.system_identifier.to_string(),
        pg_version: header.pg_major_version(),
        wal_page_magic: header.magic,
        wal_segment_size: len,
        created_at: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        created_by: format!("walarchive {}", env!("CARGO_PKG_VERSION")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(name: &str, size: usize, sysid: u64) -> Vec<u8> {
        let seg: crate::wal::SegmentName = name.parse().unwrap();
        let mut b = vec![0u8; size];
        b[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
        b[2..4].copy_from_slice(&0x0002u16.to_le_bytes());
        b[4..8].copy_from_slice(&seg.timeline.0.to_le_bytes());
        b[8..16].copy_from_slice(&seg.start_lsn(size as u64).0.to_le_bytes());
        b[24..32].copy_from_slice(&sysid.to_le_bytes());
        b[32..36].copy_from_slice(&(size as u32).to_le_bytes());
        b[36..40].copy_from_slice(&8192u32.to_le_bytes());
        b
    }

    #[test]
    fn accepts_a_real_looking_segment() {
        let name: WalFileName = "000000010000000000000003".parse().unwrap();
        let d = check_segment(&name, &segment("000000010000000000000003", 1 << 20, 42)).unwrap();
        assert_eq!(d.system_identifier, "42");
        assert_eq!(d.wal_segment_size, 1 << 20);
        assert_eq!(d.pg_version, Some(15));
    }

    #[test]
    fn refuses_wrong_segments() {
        let name: WalFileName = "000000010000000000000003".parse().unwrap();
        let good = segment("000000010000000000000003", 1 << 20, 42);
        assert!(check_segment(&name, &good[..good.len() - 8192])
            .unwrap_err()
            .contains("not a whole WAL segment"));
        let other = segment("000000010000000000000004", 1 << 20, 42);
        assert!(check_segment(&name, &other)
            .unwrap_err()
            .contains("renamed or damaged"));
        assert!(check_segment(&name, &vec![0u8; 1 << 20])
            .unwrap_err()
            .contains("magic"));
        let mut wrong_size = segment("000000010000000000000003", 1 << 21, 42);
        wrong_size.truncate(1 << 20);
        assert!(check_segment(&name, &wrong_size)
            .unwrap_err()
            .contains("page header says the segment size"));
        let higher_tli: WalFileName = "000000010000000000000003".parse().unwrap();
        let tli2 = segment("000000020000000000000003", 1 << 20, 42);
        assert!(check_segment(&higher_tli, &tli2)
            .unwrap_err()
            .contains("timeline"));
        // A new timeline's first segment starts with the old timeline's pages.
        let new_tli: WalFileName = "000000020000000000000003".parse().unwrap();
        assert!(check_segment(&new_tli, &good).is_ok());
    }
}

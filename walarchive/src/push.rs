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

use crate::format::{self, Digest};
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
    /// BLAKE3 of the file's content (what the stored object holds): what push-ahead
    /// markers record.
    pub blake3: Digest,
}

/// Archives the WAL file at `path` (as PostgreSQL's `%p`) into `repo`.
pub async fn push_file(repo: &Repository, path: &Path) -> Result<PushReport, Error> {
    let prepared = prepare(path, repo.compression).await?;
    if let Some(found) = &prepared.found {
        repo.ensure_descriptor(found, &prepared.name.to_string())
            .await?;
    }
    store_prepared(repo, prepared).await
}

/// A WAL file read, checked and encoded, ready to store.
#[derive(Debug)]
pub struct Prepared {
    /// Its name.
    pub name: WalFileName,
    /// For files holding WAL pages, the cluster properties their page header declares
    /// (to check against the repository's descriptor before storing).
    pub found: Option<Descriptor>,
    /// The object to store.
    pub encoded: format::EncodedObject,
}

/// Reads the WAL file at `path` (its name must be a WAL file name; it must be a non-empty
/// regular file), checks a file holding WAL pages as [`check_segment`] does, and encodes it,
/// streaming: see [`read_and_encode`]. Runs on tokio's blocking pool.
pub async fn prepare(path: &Path, compression: crate::Compression) -> Result<Prepared, Error> {
    let file_name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Error::BadInput {
            path: path.display().to_string(),
            reason: "has no file name".into(),
        })?;
    let name: WalFileName = file_name.parse()?;
    let owned = path.to_path_buf();
    let (found, encoded) =
        tokio::task::spawn_blocking(move || read_and_encode(&owned, &name, compression))
            .await
            .expect("encoding does not panic")?;
    Ok(Prepared {
        name,
        found,
        encoded,
    })
}

/// Stores a prepared file (whose cluster the caller checked against the repository).
pub async fn store_prepared(repo: &Repository, prepared: Prepared) -> Result<PushReport, Error> {
    let Prepared { name, encoded, .. } = prepared;
    let raw_len = encoded.header.raw_len;
    debug_assert_eq!(encoded.header.digest_kind(), format::DigestKind::Blake3);
    let blake3 = encoded.header.digest;
    let outcome = repo
        .put_encoded(&Repository::wal_key(&name), encoded)
        .await?;
    Ok(PushReport {
        name,
        raw_len,
        outcome,
        blake3,
    })
}

/// Checks that `raw` is a whole segment named `name` (size, long page header, page address
/// and timeline against the name), returning the cluster properties its page header declares.
pub fn check_segment(name: &WalFileName, raw: &[u8]) -> Result<Descriptor, String> {
    check_segment_start(name, raw, raw.len() as u64)
}

/// [`check_segment`] for a segment of `len` bytes that starts with `head` (its first page,
/// at least).
pub fn check_segment_start(
    name: &WalFileName,
    head: &[u8],
    len: u64,
) -> Result<Descriptor, String> {
    if !is_valid_segment_size(len) {
        return Err(format!(
            "is {len} bytes: not a whole WAL segment (segments are a power of two from 1 MiB to 1 GiB; truncated?)"
        ));
    }
    let header = WalPageHeader::parse(head).map_err(|e| e.to_string())?;
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

/// Size of the chunks [`read_and_encode`] reads (as fast as 1 MiB chunks to compress from,
/// measured, and small enough to stay in the CPU's caches).
pub const CHUNK: usize = 256 << 10;

thread_local! {
    /// One read buffer per (blocking-pool) thread, reused from segment to segment.
    static CHUNK_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Reads the WAL file at `path` (named `name`), checks it as [`check_segment`] does from its
/// first chunk when it holds WAL pages, and encodes it for the repository (see
/// [`format::encode_reader`]: at the default zstd level 1, memory holds one chunk, the
/// compression window and the compressed object, never the whole segment). Returns the
/// cluster properties a segment's page header declares, and the object. Blocking.
pub fn read_and_encode(
    path: &Path,
    name: &WalFileName,
    compression: crate::Compression,
) -> Result<(Option<Descriptor>, format::EncodedObject), Error> {
    let shown = path.display().to_string();
    let bad = |reason: String| Error::BadInput {
        path: shown.clone(),
        reason,
    };
    let io = |source: std::io::Error| Error::Io {
        context: format!("cannot read {shown}"),
        source,
    };
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(bad("no such file".into()))
        }
        Err(e) => return Err(io(e)),
    };
    let meta = file.metadata().map_err(io)?;
    if meta.is_dir() {
        return Err(bad("is a directory, not a WAL file".into()));
    }
    if !meta.is_file() {
        return Err(bad("is not a regular file".into()));
    }
    let len = meta.len();
    if len == 0 {
        return Err(bad("is empty".into()));
    }
    let mut found = None;
    let mut refused = None;
    let encoded = CHUNK_BUF.with(|buf| {
        let mut buf = buf.borrow_mut();
        buf.resize(CHUNK, 0);
        format::encode_reader(&mut file, len, compression, &mut buf, |head| {
            if !name.holds_wal_pages() {
                return Ok(());
            }
            match check_segment_start(name, head, len) {
                Ok(d) => {
                    found = Some(d);
                    Ok(())
                }
                Err(reason) => {
                    refused = Some(reason);
                    Err(std::io::Error::other("refused"))
                }
            }
        })
    });
    if let Some(reason) = refused {
        return Err(bad(reason));
    }
    let encoded = encoded.map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => bad(e.to_string()),
        _ => io(e),
    })?;
    Ok((found, encoded))
}

/// BLAKE3 of the file at `path`, read in chunks. Blocking.
pub fn hash_file(path: &Path) -> std::io::Result<Digest> {
    let mut file = std::fs::File::open(path)?;
    Ok(hash_reader(&mut file)?.0)
}

/// BLAKE3 of everything `reader` yields, and how many bytes that was, read in chunks of a
/// per-thread buffer. Blocking.
pub fn hash_reader(reader: &mut impl std::io::Read) -> std::io::Result<(Digest, u64)> {
    let mut hasher = blake3::Hasher::new();
    let mut len = 0u64;
    CHUNK_BUF.with(|buf| {
        let mut buf = buf.borrow_mut();
        buf.resize(CHUNK, 0);
        loop {
            match reader.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => {
                    hasher.update(&buf[..n]);
                    len += n as u64;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    })?;
    Ok((Digest(*hasher.finalize().as_bytes()), len))
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

//! The push side of PostgreSQL's `archive_command` contract.
//!
//! PostgreSQL recycles a segment as soon as `archive_command` exits 0, so a push succeeds
//! only after the object is durably stored, and everything that could make a stored
//! file useless is checked first: the name, the size, the page header (cluster, segment
//! size, page address), the content of history and backup history files, the cluster of
//! the data directory the file comes from, and the repository's descriptor. A file that
//! fails any check is refused with a reason instead of being archived, because archiving
//! garbage silently is how restores fail months later.
//!
//! Which cluster a file belongs to comes from its data directory's `global/pg_control`
//! ([`crate::control`]), for every file kind: history and backup history files carry no
//! system identifier of their own, and a segment's page header must agree with it. Without
//! a data directory (a file pushed by hand from elsewhere, no `--pgdata`), a segment is
//! still identified by its page header; a file without WAL pages is then refused, since
//! nothing would say whose it is.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::control::ClusterIdentity;
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

/// Archives the WAL file at `path` (as PostgreSQL's `%p`) into `repo`, as a file of the
/// cluster `identity` (from its data directory's pg_control; `None` when there is none).
pub async fn push_file(
    repo: &Repository,
    path: &Path,
    identity: Option<&ClusterIdentity>,
) -> Result<PushReport, Error> {
    let prepared = prepare(path, repo.compression, identity).await?;
    repo.ensure_descriptor(&prepared.found, &prepared.name.to_string())
        .await?;
    store_prepared(repo, prepared).await
}

/// A WAL file read, checked and encoded, ready to store.
#[derive(Debug)]
pub struct Prepared {
    /// Its name.
    pub name: WalFileName,
    /// The cluster properties it belongs to (its data directory's, or its page header's), to
    /// check against the repository's descriptor before storing.
    pub found: Descriptor,
    /// The object to store.
    pub encoded: format::EncodedObject,
}

/// The descriptor a repository of the cluster `id` has.
pub fn descriptor_of(id: &ClusterIdentity) -> Descriptor {
    Descriptor {
        format_version: REPOSITORY_FORMAT,
        system_identifier: id.system_identifier.to_string(),
        pg_version: id.pg_version,
        wal_page_magic: id.wal_page_magic,
        wal_segment_size: id.wal_segment_size,
        created_at: now_secs(),
        created_by: format!("walarchive {}", env!("CARGO_PKG_VERSION")),
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Reads the WAL file at `path` (its name must be a WAL file name; it must be a non-empty
/// regular file), checks it (a file holding WAL pages as [`check_segment`] does, and against
/// `identity`; a history or backup history file's content, which needs `identity`), and
/// encodes it, streaming: see [`read_and_encode`]. Runs on tokio's blocking pool.
pub async fn prepare(
    path: &Path,
    compression: crate::Compression,
    identity: Option<&ClusterIdentity>,
) -> Result<Prepared, Error> {
    let file_name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Error::BadInput {
            path: path.display().to_string(),
            reason: "has no file name".into(),
        })?;
    let name: WalFileName = file_name.parse()?;
    if identity.is_none() && !name.holds_wal_pages() {
        return Err(Error::Config(format!(
            "{}: cannot tell which cluster this {} belongs to: no data directory (global/pg_control) found; run wal-push from the data directory (as archive_command does) or pass --pgdata",
            path.display(),
            match name {
                WalFileName::History(_) => "timeline history file",
                _ => "backup history file",
            }
        )));
    }
    let owned = path.to_path_buf();
    let id = identity.cloned();
    let (found, encoded) = tokio::task::spawn_blocking(move || {
        read_and_encode(&owned, &name, compression, id.as_ref())
    })
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
        created_at: now_secs(),
        created_by: format!("walarchive {}", env!("CARGO_PKG_VERSION")),
    })
}

/// Size of the chunks [`read_and_encode`] reads (as fast as 1 MiB chunks to compress from,
/// see docs/benchmarks.md, and small enough to stay in the CPU's caches).
pub const CHUNK: usize = 256 << 10;

thread_local! {
    /// One read buffer per (blocking-pool) thread, reused from segment to segment.
    static CHUNK_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Reads the WAL file at `path` (named `name`) of the cluster `identity`, checks it and
/// encodes it for the repository. A file holding WAL pages is checked as [`check_segment`]
/// does from its first chunk, and against `identity` when given; it is encoded streaming
/// (see [`format::encode_reader`]: at the default zstd level 1, memory holds one chunk, the
/// compression window and the compressed object, never the whole segment). A history or
/// backup history file (small) is read whole and must parse ([`crate::history`]). Returns
/// the cluster properties the file belongs to, and the object. Blocking.
pub fn read_and_encode(
    path: &Path,
    name: &WalFileName,
    compression: crate::Compression,
    identity: Option<&ClusterIdentity>,
) -> Result<(Descriptor, format::EncodedObject), Error> {
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
    if !name.holds_wal_pages() {
        let id = identity.expect("prepare refuses files without WAL pages and without identity");
        if len > MAX_TEXT_FILE {
            return Err(bad(format!(
                "is {len} bytes: too long for a {}",
                if matches!(name, WalFileName::History(_)) {
                    "timeline history file"
                } else {
                    "backup history file"
                }
            )));
        }
        let mut raw = Vec::with_capacity(len as usize);
        std::io::Read::read_to_end(
            &mut std::io::Read::take(&mut file, MAX_TEXT_FILE + 1),
            &mut raw,
        )
        .map_err(io)?;
        crate::history::check_text_file(name, &raw, id.wal_segment_size).map_err(bad)?;
        let binding = format::Binding::new(id.system_identifier, &Repository::wal_key(name));
        let kind = format::DigestKind::Blake3;
        let encoded = format::encode_as(&raw, compression, kind, Some(&binding));
        return Ok((descriptor_of(id), encoded));
    }
    let mut found = None;
    let mut refused = None;
    // Bound to its key and its cluster: the data directory's, or (without one) its page
    // header's, known once the first chunk is read (the header is rewritten then).
    let binding = format::Binding::new(
        identity.map_or(0, |id| id.system_identifier),
        &Repository::wal_key(name),
    );
    let encoded = CHUNK_BUF.with(|buf| {
        let mut buf = buf.borrow_mut();
        buf.resize(CHUNK, 0);
        format::encode_reader(
            &mut file,
            len,
            compression,
            &mut buf,
            Some(&binding),
            |head| {
                let checked = check_segment_start(name, head, len)
                    .map_err(&bad)
                    .and_then(|d| match identity {
                        Some(id) => same_as_data_dir(&shown, &d, id).map(|()| descriptor_of(id)),
                        None => Ok(d),
                    });
                match checked {
                    Ok(d) => {
                        found = Some(d);
                        Ok(())
                    }
                    Err(e) => {
                        refused = Some(e);
                        Err(std::io::Error::other("refused"))
                    }
                }
            },
        )
    });
    if let Some(e) = refused {
        return Err(e);
    }
    let mut encoded = encoded.map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => bad(e.to_string()),
        _ => io(e),
    })?;
    let found: Descriptor = found.expect("the first chunk was checked");
    let sysid = found
        .system_identifier
        .parse()
        .expect("formatted from a u64");
    encoded.set_system_identifier(sysid);
    Ok((found, encoded))
}

/// Longest history or backup history file accepted (PostgreSQL's are a few hundred bytes;
/// a history file grows by one line per timeline).
const MAX_TEXT_FILE: u64 = 16 << 20;

/// Refuses a segment (at `path`, with the properties `page` its page header declares) that
/// is not of the cluster whose data directory it is pushed from.
fn same_as_data_dir(path: &str, page: &Descriptor, id: &ClusterIdentity) -> Result<(), Error> {
    use crate::repo::WalProperty::*;
    let control = descriptor_of(id);
    match crate::repo::first_difference(page, &control, [SystemIdentifier, SegmentSize, PageMagic])
    {
        None => Ok(()),
        Some((property, file, control)) => Err(Error::NotFromDataDir {
            path: path.to_string(),
            field: match property {
                SystemIdentifier => "system identifier",
                SegmentSize => "WAL segment size",
                PageMagic => "WAL page magic",
            },
            file,
            control,
            data_dir: id.data_dir.display().to_string(),
        }),
    }
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

    fn identity(sysid: u64) -> ClusterIdentity {
        ClusterIdentity {
            data_dir: "/nonexistent/data".into(),
            system_identifier: sysid,
            wal_segment_size: 1 << 20,
            wal_page_magic: 0xD110,
            pg_version: Some(15),
        }
    }

    const HISTORY: &str = "1\t0/3000090\tno recovery target specified\n";

    /// History and backup history files: only with the cluster of a data directory, only
    /// when they parse, and only into that cluster's repository; nothing stored otherwise.
    #[tokio::test]
    async fn files_without_wal_pages_are_pushed_for_their_data_directory_only() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::in_memory_for_tests("r", crate::Compression::Lz4);
        let history = dir.path().join("00000002.history");
        std::fs::write(&history, HISTORY).unwrap();
        // No data directory: nothing says whose it is.
        let e = push_file(&repo, &history, None).await.unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Config, "{e}");
        assert!(e.to_string().contains("or pass --pgdata"), "{e}");
        assert!(repo.list("").await.unwrap().is_empty());
        // Garbage, as either kind: bad input, nothing stored.
        let garbage = dir.path().join("00000003.history");
        std::fs::write(&garbage, "this is not a history file\n").unwrap();
        let e = push_file(&repo, &garbage, Some(&identity(42)))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::BadInput, "{e}");
        assert!(
            e.to_string().contains("is not a valid timeline history"),
            "{e}"
        );
        let backup = dir.path().join("000000010000000000000002.00000028.backup");
        std::fs::write(&backup, "START WAL LOCATION: 0/2000028\n").unwrap();
        let e = push_file(&repo, &backup, Some(&identity(42)))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::BadInput, "{e}");
        assert!(repo.list("").await.unwrap().is_empty());
        // A history file of cluster 42: the repository is created for it.
        let r = push_file(&repo, &history, Some(&identity(42)))
            .await
            .unwrap();
        assert!(matches!(r.outcome, PutOutcome::Stored { .. }));
        let d = repo.require_descriptor().await.unwrap();
        assert_eq!(d.system_identifier, "42");
        assert_eq!((d.wal_segment_size, d.wal_page_magic), (1 << 20, 0xD110));
        // Another cluster's history file: refused as foreign, nothing stored.
        let other = dir.path().join("00000004.history");
        std::fs::write(&other, "1\t0/5000000\tpromoted\n").unwrap();
        let e = push_file(&repo, &other, Some(&identity(43)))
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                Error::ForeignCluster {
                    field: "system identifier",
                    ..
                }
            ),
            "{e}"
        );
        let keys: Vec<String> = repo
            .list("wal/")
            .await
            .unwrap()
            .into_iter()
            .map(|l| l.key)
            .collect();
        assert_eq!(keys, ["wal/history/00000002.history"]);
    }

    /// A segment whose page header is not of the data directory's cluster is refused (status
    /// 5), whatever the repository says.
    #[tokio::test]
    async fn a_segment_must_be_of_its_data_directorys_cluster() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::in_memory_for_tests("r", crate::Compression::Lz4);
        let name = "000000010000000000000003";
        let path = dir.path().join(name);
        std::fs::write(&path, segment(name, 1 << 20, 7)).unwrap();
        let e = push_file(&repo, &path, Some(&identity(42)))
            .await
            .unwrap_err();
        assert!(matches!(e, Error::NotFromDataDir { .. }), "{e}");
        assert_eq!(e.kind(), crate::ErrorKind::ForeignCluster);
        assert!(
            e.to_string().contains(
                "its system identifier is 7 but /nonexistent/data/global/pg_control says 42"
            ),
            "{e}"
        );
        assert!(repo.list("").await.unwrap().is_empty());
        // Its own cluster's, or one pushed without a data directory: identified by it.
        std::fs::write(&path, segment(name, 1 << 20, 42)).unwrap();
        push_file(&repo, &path, Some(&identity(42))).await.unwrap();
        let next = dir.path().join("000000010000000000000004");
        std::fs::write(&next, segment("000000010000000000000004", 1 << 20, 42)).unwrap();
        push_file(&repo, &next, None).await.unwrap();
        assert_eq!(
            repo.require_descriptor().await.unwrap().system_identifier,
            "42"
        );
    }
}

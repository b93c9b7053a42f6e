//! Base backup layout and the manifest that marks a backup complete.
//!
//! A backup lives under `basebackups/<name>/`:
//!
//! ```text
//! started.json                      written first (create-only): claims the name, marks "in progress"
//! data/part-000001 ...              the data directory as one tar stream, cut into parts
//! tablespaces/<oid>/part-000001 ... one tar stream per tablespace
//! backup_label                      as returned by pg_backup_stop
//! tablespace_map                    as returned by pg_backup_stop (when there are tablespaces)
//! manifest.json                     written last, only once the WAL the backup needs is archived
//! permanent                         present while the backup is marked permanent
//! ```
//!
//! Every object uses the self-describing format of [`crate::format`]. A tar stream is cut
//! into parts of a fixed uncompressed size so that neither side ever holds more than a few
//! parts in memory, whatever the database size; a file may span parts. The manifest is the
//! only thing that makes a backup exist: a backup that died half-way has `started.json` and
//! parts but no manifest, and is never listed as complete or restored.

use serde::{Deserialize, Serialize};

use crate::lsn::Lsn;

/// Prefix of all backups.
pub const BACKUPS_PREFIX: &str = "basebackups";
/// Object whose presence marks a backup permanent: retention never deletes it, nor the
/// WAL it needs. Kept apart from the manifest because the mark can change.
pub const PERMANENT_MARKER: &str = "permanent";

/// Manifest format version written: 2 records each file's BLAKE3, version 1 its SHA-256.
///
/// Why BLAKE3: every byte of a backup is hashed once on each side (backup-push, and
/// backup-fetch or verification), and BLAKE3 runs several times as fast as SHA-256 on one
/// core (figures in docs/benchmarks.md); the largest relation file (up to 1 GiB) is one
/// sequential hash, so on restore it was the longest task. Both are cryptographic: a
/// damaged or altered file is caught the same. Readers accept both versions.
pub const MANIFEST_VERSION: u32 = 2;

/// Relative key of an object of backup `name`.
pub fn backup_key(name: &str, rest: &str) -> String {
    format!("{BACKUPS_PREFIX}/{name}/{rest}")
}

/// Relative key of part `index` (1-based) of a stream (`data` or `tablespaces/<oid>`).
pub fn part_key(name: &str, stream: &str, index: u32) -> String {
    backup_key(name, &format!("{stream}/part-{index:06}"))
}

/// The stream name of a tablespace.
pub fn tablespace_stream(oid: u32) -> String {
    format!("tablespaces/{oid}")
}

/// Written when a backup starts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Started {
    /// Backup name.
    pub name: String,
    /// Label passed to pg_backup_start.
    pub label: String,
    /// Start time (RFC 3339, UTC).
    pub start_time: String,
    /// Host that ran backup-push.
    pub host: String,
    /// Unique to the backup-push that wrote it (process id and a nonce): a retried upload
    /// whose first answer was lost then finds its own claim, not somebody else's.
    #[serde(default)]
    pub claim: String,
}

/// What kind of entry a manifest line is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    /// Regular file.
    File,
    /// Directory.
    Dir,
    /// Symbolic link.
    Symlink,
}

/// One file, directory or link of the backup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Stream it is in: `data` or `tablespaces/<oid>`.
    pub stream: String,
    /// Path relative to the stream's root (the data directory or the tablespace directory).
    pub path: String,
    /// Kind of entry.
    pub kind: EntryKind,
    /// Bytes stored (for files).
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
    /// SHA-256 of the content stored (files, manifest version 1), hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// BLAKE3 of the content stored (files, manifest version 2), hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blake3: Option<String>,
    /// Link target (symlinks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// One tar stream and the number of parts it was cut into.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamInfo {
    /// `data` or `tablespaces/<oid>`.
    pub name: String,
    /// Tablespace OID (none for the data directory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tablespace_oid: Option<u32>,
    /// Where the tablespace was on the backed-up server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tablespace_location: Option<String>,
    /// Number of parts.
    pub parts: u32,
    /// Uncompressed bytes of the tar stream.
    pub tar_bytes: u64,
    /// Bytes stored (headers and compressed bodies).
    pub stored_bytes: u64,
}

/// The manifest: a complete backup's description.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Manifest format version.
    pub format_version: u32,
    /// Backup name.
    pub name: String,
    /// Label.
    pub label: String,
    /// LSN where the backup starts (the checkpoint's redo point).
    pub start_lsn: Lsn,
    /// LSN where it ends: recovery must replay at least to here.
    pub stop_lsn: Lsn,
    /// Timeline the backup was taken on.
    pub timeline: u32,
    /// Start time, RFC 3339 UTC (from the server's clock).
    pub start_time: String,
    /// Stop time, RFC 3339 UTC (from the server's clock).
    pub stop_time: String,
    /// Next transaction ID at stop: transactions with this ID or later committed after the backup.
    pub stop_next_xid: u64,
    /// PostgreSQL version number (e.g. 150004).
    pub pg_version_num: u32,
    /// The cluster's system identifier.
    pub system_identifier: String,
    /// WAL segment size in bytes.
    pub wal_segment_size: u64,
    /// Whether it was taken from a standby.
    pub from_standby: bool,
    /// Bytes of the files backed up.
    pub original_bytes: u64,
    /// Bytes stored in the repository for this backup.
    pub stored_bytes: u64,
    /// Codec used for the parts.
    pub compression: String,
    /// Uncompressed size of one part.
    pub part_size: u64,
    /// The tar streams.
    pub streams: Vec<StreamInfo>,
    /// Every file, directory and link.
    pub files: Vec<FileEntry>,
    /// Whether a tablespace_map object exists.
    pub has_tablespace_map: bool,
    /// The walarchive version that took it.
    pub created_by: String,
    /// Pages of the source's data files that failed their checksum as the backup copied them
    /// (clusters with data checksums). The backup holds them as they were: a restore brings
    /// the damage back, so this stays with the backup for `backup-list` and whoever restores it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub damaged_pages: Vec<DamagedFile>,
}

/// A data file some of whose pages failed their checksum when the backup copied it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DamagedFile {
    /// Stream it is in: `data` or `tablespaces/<oid>`.
    pub stream: String,
    /// Path relative to the stream's root.
    pub path: String,
    /// Block numbers (in the relation) of the pages that failed.
    pub blocks: Vec<u32>,
}

impl Manifest {
    /// How many pages failed their checksum when the backup was taken.
    pub fn damaged_page_count(&self) -> usize {
        self.damaged_pages.iter().map(|f| f.blocks.len()).sum()
    }
}

impl Manifest {
    /// Test support, not for production use: a minimal manifest of backup `name` (also its
    /// label) taken on `timeline` from `start_lsn` to `stop_lsn`, with 1 MiB WAL segments,
    /// no streams or files, empty times and `stop_next_xid` 0. Tests set what else they
    /// need with struct update syntax. Public (not `cfg(test)`) because walarchive-restore's
    /// unit tests use it too.
    #[doc(hidden)]
    pub fn for_tests(name: &str, timeline: u32, start_lsn: Lsn, stop_lsn: Lsn) -> Manifest {
        Manifest {
            format_version: MANIFEST_VERSION,
            name: name.into(),
            label: name.into(),
            start_lsn,
            stop_lsn,
            timeline,
            start_time: String::new(),
            stop_time: String::new(),
            stop_next_xid: 0,
            pg_version_num: 150000,
            system_identifier: "1".into(),
            wal_segment_size: 1 << 20,
            from_standby: false,
            original_bytes: 0,
            stored_bytes: 0,
            compression: "zstd:1".into(),
            part_size: 1,
            streams: vec![],
            files: vec![],
            has_tablespace_map: false,
            damaged_pages: Vec::new(),
            created_by: "t".into(),
        }
    }
}

/// Parsing helpers for RFC 3339 times stored in manifests.
pub fn parse_time(s: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&chrono::Utc))
}

/// Backup names sort by time: `base_YYYYMMDDTHHMMSSZ`.
pub fn backup_name(at: chrono::DateTime<chrono::Utc>) -> String {
    format!("base_{}", at.format("%Y%m%dT%H%M%SZ"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_names() {
        assert_eq!(
            part_key("base_x", "data", 3),
            "basebackups/base_x/data/part-000003"
        );
        assert_eq!(
            part_key("b", &tablespace_stream(16384), 1),
            "basebackups/b/tablespaces/16384/part-000001"
        );
        let t = parse_time("2026-11-22T05:54:23.5Z").unwrap();
        assert_eq!(backup_name(t), "base_20261122T055423Z");
        assert!(parse_time("yesterday").is_none());
    }
}

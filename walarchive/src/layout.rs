//! The names a repository's own objects have, and nothing else.
//!
//! Everything that deletes (retention, garbage collection, `delete everything`) or that
//! decides whether a prefix already holds a repository acts only on keys that parse here as
//! exactly the key walarchive would have written: a WAL file under `wal/<TLI>/<LOG>/` (or
//! `wal/history/`), an object of a backup under `basebackups/<name>/`, the descriptor. A key
//! that merely *ends* like a WAL file name is not enough: another repository stored at
//! `R/wal` has keys like `wal/wal/00000001/00000000/000000010000000000000003`, whose last
//! part is a WAL file name, and those must never be taken for R's.

use crate::manifest::BACKUPS_PREFIX;
use crate::wal::WalFileName;

/// Name of the descriptor object.
pub const DESCRIPTOR_KEY: &str = "walarchive.repo";

/// The relative key of a WAL file: `wal/history/NAME` for a history file, else
/// `wal/<TLI>/<LOG>/NAME`.
pub fn wal_key(name: &WalFileName) -> String {
    match name {
        WalFileName::History(_) => format!("wal/history/{name}"),
        _ => {
            let seg = name
                .segment()
                .expect("non-history WAL files name a segment");
            format!("wal/{}/{:08X}/{name}", seg.timeline.hex(), seg.log)
        }
    }
}

/// A key (relative to the repository root) that is one of the repository's own objects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OwnKey {
    /// The descriptor, `walarchive.repo`.
    Descriptor,
    /// A WAL file, where [`wal_key`] puts it.
    Wal(WalFileName),
    /// An object of base backup `name`.
    Backup {
        /// The backup's name.
        name: String,
        /// Which object of it.
        object: BackupObject,
    },
}

/// The objects a base backup is made of (see [`crate::manifest`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackupObject {
    /// `started.json`.
    Started,
    /// `manifest.json`.
    Manifest,
    /// `backup_label`.
    Label,
    /// `tablespace_map`.
    TablespaceMap,
    /// `permanent`.
    Permanent,
    /// A part of a tar stream: `data/part-NNNNNN` or `tablespaces/<oid>/part-NNNNNN`.
    Part {
        /// `data` or `tablespaces/<oid>`.
        stream: String,
        /// 1-based index.
        index: u32,
    },
}

/// Whether `name` can be a backup's name: backup-push makes `base_YYYYMMDDTHHMMSSZ[_N]`;
/// any name of letters, digits, `_`, `-` and `.` (not `.` or `..`) is accepted.
pub fn is_backup_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
}

/// The repository object `key` (relative to the repository root) is, if it is one.
pub fn parse_key(key: &str) -> Option<OwnKey> {
    if key == DESCRIPTOR_KEY {
        return Some(OwnKey::Descriptor);
    }
    if let Some(rest) = key.strip_prefix("wal/") {
        let name: WalFileName = rest.rsplit('/').next()?.parse().ok()?;
        return (wal_key(&name) == key).then_some(OwnKey::Wal(name));
    }
    let rest = key.strip_prefix(BACKUPS_PREFIX)?.strip_prefix('/')?;
    let (name, object) = rest.split_once('/')?;
    if !is_backup_name(name) {
        return None;
    }
    let object = match object {
        "started.json" => BackupObject::Started,
        "manifest.json" => BackupObject::Manifest,
        "backup_label" => BackupObject::Label,
        "tablespace_map" => BackupObject::TablespaceMap,
        crate::manifest::PERMANENT_MARKER => BackupObject::Permanent,
        part => {
            let (stream, file) = part.rsplit_once('/')?;
            let index = parse_part(file)?;
            let stream_ok = stream == "data"
                || stream
                    .strip_prefix("tablespaces/")
                    .and_then(|oid| oid.parse::<u32>().ok().filter(|o| o.to_string() == oid))
                    .is_some();
            if !stream_ok {
                return None;
            }
            BackupObject::Part {
                stream: stream.to_string(),
                index,
            }
        }
    };
    Some(OwnKey::Backup {
        name: name.to_string(),
        object,
    })
}

/// `part-NNNNNN` (at least six digits, as [`crate::manifest::part_key`] writes them).
fn parse_part(file: &str) -> Option<u32> {
    let digits = file.strip_prefix("part-")?;
    if digits.len() < 6 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let index: u32 = digits.parse().ok()?;
    (index > 0 && format!("{index:06}") == digits).then_some(index)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{backup_key, part_key, tablespace_stream};

    #[test]
    fn own_keys_round_trip() {
        for name in [
            "000000010000000000000003",
            "000000010000000000000003.partial",
            "000000010000000000000002.00000028.backup",
            "00000002.history",
        ] {
            let n: WalFileName = name.parse().unwrap();
            assert_eq!(parse_key(&wal_key(&n)), Some(OwnKey::Wal(n)));
        }
        assert_eq!(parse_key("walarchive.repo"), Some(OwnKey::Descriptor));
        let b = "base_20261122T055423Z_1";
        for (key, object) in [
            (backup_key(b, "started.json"), BackupObject::Started),
            (backup_key(b, "manifest.json"), BackupObject::Manifest),
            (backup_key(b, "backup_label"), BackupObject::Label),
            (backup_key(b, "tablespace_map"), BackupObject::TablespaceMap),
            (backup_key(b, "permanent"), BackupObject::Permanent),
            (
                part_key(b, "data", 12),
                BackupObject::Part {
                    stream: "data".into(),
                    index: 12,
                },
            ),
            (
                part_key(b, &tablespace_stream(16384), 1_234_567),
                BackupObject::Part {
                    stream: "tablespaces/16384".into(),
                    index: 1_234_567,
                },
            ),
        ] {
            assert_eq!(
                parse_key(&key),
                Some(OwnKey::Backup {
                    name: b.into(),
                    object
                }),
                "{key}"
            );
        }
    }

    /// Keys of a repository nested under this one, stray files, and lookalikes are not
    /// this repository's.
    #[test]
    fn other_keys_are_not_ours() {
        for key in [
            "",
            "wal",
            "wal/walarchive.repo",
            "wal/wal/00000001/00000000/000000010000000000000003",
            "wal/00000001/00000000/wal/00000001/00000000/000000010000000000000003",
            "wal/00000002/00000000/000000010000000000000003",
            "wal/00000001/00000001/000000010000000000000003",
            "wal/00000001/000000010000000000000003",
            "wal/history/00000002.history.tmp",
            "wal/00000002.history",
            "wal/history/x/00000002.history",
            "x/walarchive.repo",
            "walarchive.repo.tmp",
            "basebackups/walarchive.repo",
            "basebackups/b/walarchive.repo",
            "basebackups/b/wal/00000001/00000000/000000010000000000000003",
            "basebackups/b/data/part-1",
            "basebackups/b/data/part-0000001",
            "basebackups/b/data/part-000000",
            "basebackups/b/data/part-00000a",
            "basebackups/b/data/x/part-000001",
            "basebackups/b/tablespaces/016384/part-000001",
            "basebackups/b/tablespaces/x/part-000001",
            "basebackups/b/manifest.json/x",
            "basebackups/../manifest.json",
            "basebackups/./manifest.json",
            "basebackups/a b/manifest.json",
            "basebackups/manifest.json",
            "other/thing",
        ] {
            assert_eq!(parse_key(key), None, "{key:?}");
        }
    }
}

//! The catalog: which backups a repository holds, complete or not.
//!
//! Listing reads one "directory" listing of `basebackups/` and one small manifest per
//! backup, never the parts, so it stays cheap however large the backups are. A backup
//! without a manifest is incomplete (in progress, or died): it is reported only when asked
//! for, and never chosen for a restore.

use crate::codec::Compression;
use crate::manifest::{backup_key, Manifest, Started, BACKUPS_PREFIX, PERMANENT_MARKER};
use crate::repo::Repository;
use crate::Error;

/// A backup found in the repository.
#[derive(Clone, Debug)]
pub struct BackupEntry {
    /// Backup name.
    pub name: String,
    /// The manifest, when the backup is complete.
    pub manifest: Option<Manifest>,
    /// The start record, when it could be read.
    pub started: Option<Started>,
    /// Why the manifest could not be read, when it exists but is damaged.
    pub damaged: Option<String>,
    /// Whether the backup is marked permanent.
    pub permanent: bool,
}

impl BackupEntry {
    /// Whether the backup is complete (has a manifest).
    pub fn is_complete(&self) -> bool {
        self.manifest.is_some()
    }
}

/// Reads the manifest of backup `name`.
pub async fn load_manifest(repo: &Repository, name: &str) -> Result<Manifest, Error> {
    let key = backup_key(name, "manifest.json");
    let (_, raw) = repo.get_verified(&key).await?;
    let bad = |reason: String| Error::Corrupt {
        key: key.clone(),
        source: crate::format::FormatError::Decode(crate::codec::DecodeError {
            codec: "json",
            reason,
        }),
    };
    let m: Manifest = serde_json::from_slice(&raw).map_err(|e| bad(e.to_string()))?;
    if m.format_version > crate::manifest::MANIFEST_VERSION {
        return Err(bad(format!(
            "manifest format version {} is newer than this walarchive understands (upgrade walarchive)",
            m.format_version
        )));
    }
    Ok(m)
}

/// Lists the repository's backups, oldest first. Incomplete ones are included only when
/// `include_incomplete` is set.
pub async fn list_backups(
    repo: &Repository,
    include_incomplete: bool,
) -> Result<Vec<BackupEntry>, Error> {
    let mut out = Vec::new();
    for prefix in repo.list_prefixes(&format!("{BACKUPS_PREFIX}/")).await? {
        let Some(name) = prefix.rsplit('/').next().map(str::to_string) else {
            continue;
        };
        if !crate::layout::is_backup_name(&name) {
            continue;
        }
        match load_manifest(repo, &name).await {
            Ok(m) => out.push(BackupEntry {
                permanent: is_permanent(repo, &name).await?,
                name,
                manifest: Some(m),
                started: None,
                damaged: None,
            }),
            // One damaged manifest must not hide the other backups.
            Err(e @ Error::Corrupt { .. }) => {
                tracing::warn!("backup {name} is damaged and cannot be restored: {e}");
                if include_incomplete {
                    out.push(BackupEntry {
                        permanent: is_permanent(repo, &name).await?,
                        name,
                        manifest: None,
                        started: None,
                        damaged: Some(e.to_string()),
                    });
                }
            }
            Err(Error::NotFound { .. }) if include_incomplete => {
                // A local directory left empty by a deletion is not a backup, nor one that
                // holds none of a backup's objects (another repository nested here, say).
                if !repo
                    .list(&format!("{BACKUPS_PREFIX}/{name}/"))
                    .await?
                    .iter()
                    .any(|o| crate::layout::parse_key(&o.key).is_some())
                {
                    continue;
                }
                let started = repo
                    .get_verified(&backup_key(&name, "started.json"))
                    .await
                    .ok()
                    .and_then(|(_, raw)| serde_json::from_slice(&raw).ok());
                out.push(BackupEntry {
                    permanent: is_permanent(repo, &name).await?,
                    name,
                    manifest: None,
                    started,
                    damaged: None,
                });
            }
            Err(Error::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    out.sort_by(|a, b| {
        let key = |e: &BackupEntry| {
            e.manifest
                .as_ref()
                .map(|m| m.start_time.clone())
                .or_else(|| e.started.as_ref().map(|s| s.start_time.clone()))
                .unwrap_or_default()
        };
        key(a).cmp(&key(b)).then(a.name.cmp(&b.name))
    });
    Ok(out)
}

/// Whether backup `name` is marked permanent.
pub async fn is_permanent(repo: &Repository, name: &str) -> Result<bool, Error> {
    repo.exists(&repo.key(&backup_key(name, PERMANENT_MARKER)))
        .await
}

/// Marks backup `name` permanent, or removes the mark.
pub async fn set_permanent(repo: &Repository, name: &str, permanent: bool) -> Result<(), Error> {
    let key = backup_key(name, PERMANENT_MARKER);
    if permanent {
        repo.put_new(&key, name.as_bytes(), Compression::None)
            .await?;
    } else {
        repo.delete(&key).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lsn::Lsn;

    #[tokio::test]
    async fn manifests_of_either_version_load_and_newer_ones_are_refused() {
        let repo = Repository::in_memory_for_tests("r", Compression::Zstd(1));
        for version in [1, crate::manifest::MANIFEST_VERSION, 99] {
            let name = format!("base_v{version}");
            let m = Manifest {
                format_version: version,
                ..Manifest::for_tests(&name, 1, Lsn(0x100_0028), Lsn(0x100_0100))
            };
            repo.put_new(
                &backup_key(&name, "manifest.json"),
                &serde_json::to_vec(&m).unwrap(),
                Compression::Zstd(1),
            )
            .await
            .unwrap();
            let loaded = load_manifest(&repo, &name).await;
            if version <= crate::manifest::MANIFEST_VERSION {
                assert_eq!(loaded.unwrap(), m);
            } else {
                let e = loaded.unwrap_err().to_string();
                assert!(
                    e.contains("manifest format version 99 is newer than this walarchive"),
                    "{e}"
                );
            }
        }
    }
}

//! What a new instance's repository prefix holds: a new cluster must not archive into
//! another cluster's archive.

use super::Inner;

impl Inner {
    /// What `repository` holds besides its descriptor: `None` when nothing (a new cluster
    /// must not archive into another cluster's archive), else why it is not empty.
    pub(super) async fn repository_contents(
        &self,
        repository: &str,
    ) -> Result<Option<String>, String> {
        repository_contents(
            repository,
            crate::archive::walarchive_config(&self.config).as_deref(),
        )
        .await
        .map_err(|e| e.to_string())
    }
}

/// What the prefix `url` holds besides a descriptor: `None` when nothing, else why it is not
/// empty. Read with the core library rather than the CLI because the CLI's exit statuses do
/// not tell the cases apart: `wal-list` on a prefix that holds walarchive objects but lost its
/// descriptor answers `DescriptorMissing` (naming `repo-repair`), but with status 6, as for an
/// empty prefix ("no repository"), so only its message differs; and `repo-repair` exits 6 both
/// for an empty prefix and for objects that do not say enough to rebuild a descriptor from.
/// The listing itself is unambiguous.
async fn repository_contents(
    url: &str,
    config: Option<&std::path::Path>,
) -> Result<Option<String>, walarchive::Error> {
    use walarchive::layout::{parse_key, OwnKey};
    let repo = crate::archive::open_with(url, config)?;
    let listed = repo.list("").await?;
    let descriptor = listed
        .iter()
        .any(|l| matches!(parse_key(&l.key), Some(OwnKey::Descriptor)));
    let mut others = listed
        .iter()
        .filter(|l| !matches!(parse_key(&l.key), Some(OwnKey::Descriptor)));
    let Some(first) = others.next() else {
        return Ok(None);
    };
    let count = 1 + others.count();
    Ok(Some(match parse_key(&first.key) {
        // The core's own refusal, which names the repair.
        Some(_) if !descriptor => walarchive::Error::DescriptorMissing {
            url: url.to_string(),
            example: first.key.clone(),
        }
        .to_string(),
        Some(_) => format!(
            "{url} holds an archive ({count} objects, e.g. {})",
            first.key
        ),
        None => format!(
            "{url} holds {count} objects that are not walarchive's (e.g. {})",
            first.key
        ),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only a prefix with nothing but (at most) a descriptor is empty: walarchive objects
    /// whose descriptor was deleted are an archive too (the CLI's `wal-list` exits 6 for them,
    /// as for an empty prefix), and so is anything else.
    #[tokio::test]
    async fn only_an_empty_prefix_is_an_empty_repository() {
        use walarchive::repo::DESCRIPTOR_KEY;
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}/r", dir.path().display());
        let root = dir.path().join("r");
        let contents = || repository_contents(&url, None);
        assert_eq!(contents().await.unwrap(), None, "no directory at all");
        std::fs::create_dir_all(&root).unwrap();
        assert_eq!(contents().await.unwrap(), None, "an empty directory");
        std::fs::write(root.join(DESCRIPTOR_KEY), b"{}").unwrap();
        assert_eq!(contents().await.unwrap(), None, "a descriptor only");
        let wal = walarchive::Repository::wal_key(&"000000010000000000000001".parse().unwrap());
        let path = root.join(&wal);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, b"x").unwrap();
        let what = contents().await.unwrap().expect("an archive");
        assert!(
            what.contains("holds an archive") && what.contains(&wal),
            "{what}"
        );
        std::fs::remove_file(root.join(DESCRIPTOR_KEY)).unwrap();
        let what = contents()
            .await
            .unwrap()
            .expect("objects without a descriptor");
        assert!(
            what.contains("repo-repair") && what.contains(&wal),
            "{what}"
        );
        std::fs::remove_file(&path).unwrap();
        std::fs::write(root.join("stray.txt"), b"x").unwrap();
        let what = contents().await.unwrap().expect("a stray object");
        assert!(what.contains("not walarchive's"), "{what}");
    }
}

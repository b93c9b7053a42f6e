//! What a new instance's repository prefix holds (a new cluster must not archive into
//! another cluster's archive), and the one way the broker opens a repository with the core
//! library (also for the API, which reads a clone source's backups).

use super::Inner;

impl Inner {
    /// What `repository` holds besides its descriptor: `None` when nothing (a new cluster
    /// must not archive into another cluster's archive), else why it is not empty.
    pub(super) async fn repository_contents(
        &self,
        repository: &str,
    ) -> Result<Option<String>, String> {
        repository_contents(repository, walarchive_config(&self.config).as_deref())
            .await
            .map_err(|e| e.to_string())
    }
}

/// The walarchive configuration file the broker's storage settings come from: the broker's
/// `repository.walarchive_config`, else `$WALARCHIVE_CONFIG`.
fn walarchive_config(config: &crate::config::BrokerConfig) -> Option<std::path::PathBuf> {
    config
        .repository
        .walarchive_config
        .clone()
        .or_else(|| std::env::var_os("WALARCHIVE_CONFIG").map(Into::into))
}

/// Opens the repository at `url` with the core library, with the storage settings of the
/// broker's configuration (see [`open_with`]).
pub(crate) fn open(
    config: &crate::config::BrokerConfig,
    url: &str,
) -> Result<walarchive::Repository, walarchive::Error> {
    open_with(url, walarchive_config(config).as_deref())
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
    let repo = open_with(url, config)?;
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

/// Opens `url` with storage settings as the CLI the broker runs takes them: the `[storage]`
/// and `[retry]` tables of `config` (the broker's `walarchive_config`, or
/// `/etc/walarchive.toml`), the environment for the rest.
fn open_with(
    url: &str,
    config: Option<&std::path::Path>,
) -> Result<walarchive::Repository, walarchive::Error> {
    let default = std::path::Path::new("/etc/walarchive.toml");
    let file = match config {
        Some(p) => walarchive::config::ConfigFile::load(p)?,
        None if default.exists() => walarchive::config::ConfigFile::load(default)?,
        None => Default::default(),
    };
    let policy = file.retry.apply(walarchive::RetryPolicy::default())?;
    // The broker's own environment, as walarchive's CLI passes its own.
    let env = walarchive::storage::StorageEnv::new(
        std::env::vars(),
        std::env::var_os(walarchive::storage::unreliable::ENV),
    );
    walarchive::Repository::open(
        url,
        &file.storage,
        &env,
        policy,
        walarchive::Compression::default(),
    )
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

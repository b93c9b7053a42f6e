//! A local-directory repository written by root keeps its owner.
//!
//! Objects in a `file://` repository are private to their owner (0600, directories 0700; see
//! `FileMode`). The repository normally belongs to the database's OS user, who runs
//! archive_command; an operator running walarchive as root on it (`backup-mark`, a `wal-push`
//! by hand) would create objects and directories that this user can then neither read nor
//! write into, and archiving or restoring would fail later. So when root writes into a
//! repository whose directory (or nearest existing ancestor) belongs to another user, every
//! object it stores, and every directory the store created for it, is handed to that user
//! (`chown`) right after the put. Nothing is ever more open than its mode in between: the
//! files are root's and private until then.

use std::os::unix::fs::MetadataExt;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};

/// The owner root's writes go to, when root writes into another user's local repository:
/// the owner of `repository` (an absolute path) or of its nearest existing ancestor.
pub fn foreign_owner(repository: &FsPath) -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let mut dir = repository.to_path_buf();
    loop {
        if let Ok(m) = std::fs::metadata(&dir) {
            return (m.uid() != 0).then_some((m.uid(), m.gid()));
        }
        if !dir.pop() {
            return None;
        }
    }
}

/// A local store whose puts are handed to `uid`:`gid` (see the module documentation).
#[derive(Debug)]
pub struct OwnedBy {
    inner: Arc<dyn ObjectStore>,
    /// The repository's directory: ownership is fixed up to it, never above.
    root: PathBuf,
    uid: u32,
    gid: u32,
}

impl OwnedBy {
    /// Wraps `inner`, a `LocalFileSystem` rooted at `/`, for the repository at `root`.
    pub fn new(inner: Arc<dyn ObjectStore>, root: PathBuf, uid: u32, gid: u32) -> OwnedBy {
        OwnedBy {
            inner,
            root,
            uid,
            gid,
        }
    }

    /// Hands `location` and the directories above it, up to the repository's, that are
    /// still root's to the owner.
    fn hand_over(&self, location: &Path) -> Result<()> {
        let file = FsPath::new("/").join(location.as_ref());
        let chown = |p: &FsPath| {
            std::os::unix::fs::lchown(p, Some(self.uid), Some(self.gid)).map_err(|e| {
                object_store::Error::Generic {
                    store: "LocalFileSystem",
                    source: format!("cannot hand {} to its repository's owner: {e}", p.display())
                        .into(),
                }
            })
        };
        chown(&file)?;
        let mut dir = file.parent();
        while let Some(d) = dir.filter(|d| d.starts_with(&self.root)) {
            match std::fs::symlink_metadata(d) {
                Ok(m) if m.uid() == 0 => chown(d)?,
                _ => break,
            }
            dir = d.parent();
        }
        Ok(())
    }
}

impl std::fmt::Display for OwnedBy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (owned by {}:{})", self.inner, self.uid, self.gid)
    }
}

#[async_trait::async_trait]
impl ObjectStore for OwnedBy {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        let r = self.inner.put_opts(location, payload, opts).await?;
        self.hand_over(location)?;
        Ok(r)
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        // walarchive stores every object with one put; a multipart upload would not be
        // handed over, so it is refused rather than left to root.
        let _ = opts;
        Err(object_store::Error::NotImplemented {
            operation: format!("multipart upload of {location} into another user's repository"),
            implementer: "walarchive".into(),
        })
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await?;
        self.hand_over(to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::local::LocalFileSystem;
    use object_store::ObjectStoreExt;

    #[tokio::test]
    async fn roots_puts_go_to_the_repository_owner() {
        // SAFETY: as above.
        if unsafe { libc::geteuid() } != 0 {
            return; // only root can hand files over
        }
        let t = tempfile::tempdir().unwrap();
        let repo = t.path().join("repo");
        std::fs::create_dir(&repo).unwrap();
        std::os::unix::fs::chown(&repo, Some(65534), Some(65534)).unwrap();
        assert_eq!(
            foreign_owner(&repo.join("missing/below")),
            Some((65534, 65534))
        );
        assert_eq!(foreign_owner(t.path()), None);
        let store = OwnedBy::new(Arc::new(LocalFileSystem::new()), repo.clone(), 65534, 65534);
        let key = Path::from(format!("{}/wal/a/b/object", repo.display()));
        store
            .put(&key, PutPayload::from_static(b"x"))
            .await
            .unwrap();
        for p in ["wal", "wal/a", "wal/a/b", "wal/a/b/object"] {
            let m = std::fs::metadata(repo.join(p)).unwrap();
            assert_eq!((m.uid(), m.gid()), (65534, 65534), "{p}");
        }
        // Never above the repository.
        assert_eq!(std::fs::metadata(t.path()).unwrap().uid(), 0);
    }
}

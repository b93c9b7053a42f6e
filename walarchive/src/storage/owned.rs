//! A local-directory repository written by root keeps its owner.
//!
//! Objects in a `file://` repository are private to their owner (0600, directories 0700; see
//! `FileMode`). The repository normally belongs to the database's OS user, who runs
//! archive_command; an operator running walarchive as root on it (`backup-mark`, a `wal-push`
//! by hand) would create objects and directories that this user can then neither read nor
//! write into, and archiving or restoring would fail later. So when root writes into a
//! repository whose directory (or, before the first push creates it, its nearest existing
//! ancestor: root's first push into `/var/lib/postgresql/archive`) belongs to another user,
//! every object it stores, and every directory the store created for it, is handed to that
//! user (`chown`) right after the put; a repository that is root's own is left alone.
//! Nothing is ever more open than its mode in between: the files are root's and private
//! until then.
//!
//! An object already stored (an identical re-push: the create-only put is refused) is
//! handed over too: one that root stored earlier without being handed over (a crash
//! between the put and the chown) is repaired by the next push of it.

use std::os::unix::fs::MetadataExt;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, Result, UploadPart,
};

/// The owner root's writes go to, when root writes into another user's local repository:
/// the owner of `repository` (an absolute path) or of its nearest existing ancestor.
pub fn foreign_owner(repository: &FsPath) -> Option<(u32, u32)> {
    if !nix::unistd::geteuid().is_root() {
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

/// Who root's writes are handed to, and up to which directory.
#[derive(Clone, Debug)]
struct Owner {
    /// The repository's directory: ownership is fixed up to it, never above.
    root: PathBuf,
    uid: u32,
    gid: u32,
}

impl Owner {
    fn chown(&self, p: &FsPath) -> Result<()> {
        std::os::unix::fs::lchown(p, Some(self.uid), Some(self.gid)).map_err(|e| {
            object_store::Error::Generic {
                store: "LocalFileSystem",
                source: format!("cannot hand {} to its repository's owner: {e}", p.display())
                    .into(),
            }
        })
    }

    /// Hands the object at `location` and the directories above it to the owner.
    fn hand_over(&self, location: &Path) -> Result<()> {
        let file = FsPath::new("/").join(location.as_ref());
        self.chown(&file)?;
        self.hand_over_dirs(location)
    }

    /// Hands the directories above `location`, up to the repository's, that are still
    /// root's to the owner (also after a failed put, which may have created them).
    fn hand_over_dirs(&self, location: &Path) -> Result<()> {
        let file = FsPath::new("/").join(location.as_ref());
        let mut dir = file.parent();
        while let Some(d) = dir.filter(|d| d.starts_with(&self.root)) {
            match std::fs::symlink_metadata(d) {
                Ok(m) if m.uid() == 0 => self.chown(d)?,
                _ => break,
            }
            dir = d.parent();
        }
        Ok(())
    }
}

/// A local store whose puts are handed to `uid`:`gid` (see the module documentation).
#[derive(Debug)]
pub struct OwnedBy {
    inner: Arc<dyn ObjectStore>,
    owner: Owner,
}

impl OwnedBy {
    /// Wraps `inner`, a `LocalFileSystem` rooted at `/`, for the repository at `root`.
    pub fn new(inner: Arc<dyn ObjectStore>, root: PathBuf, uid: u32, gid: u32) -> OwnedBy {
        OwnedBy {
            inner,
            owner: Owner { root, uid, gid },
        }
    }
}

impl std::fmt::Display for OwnedBy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (owned by {}:{})",
            self.inner, self.owner.uid, self.owner.gid
        )
    }
}

/// A multipart upload whose object is handed over once complete.
#[derive(Debug)]
struct OwnedUpload {
    inner: Box<dyn MultipartUpload>,
    owner: Owner,
    location: Path,
}

#[async_trait::async_trait]
impl MultipartUpload for OwnedUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        self.inner.put_part(data)
    }

    async fn complete(&mut self) -> Result<PutResult> {
        let r = self.inner.complete().await;
        match r {
            Ok(r) => {
                self.owner.hand_over(&self.location)?;
                Ok(r)
            }
            Err(e) => {
                let _ = self.owner.hand_over_dirs(&self.location);
                Err(e)
            }
        }
    }

    async fn abort(&mut self) -> Result<()> {
        let r = self.inner.abort().await;
        let _ = self.owner.hand_over_dirs(&self.location);
        r
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
        match self.inner.put_opts(location, payload, opts).await {
            Ok(r) => {
                self.owner.hand_over(location)?;
                Ok(r)
            }
            // Already stored: the existing object is the owner's too (see the module
            // documentation), whatever the caller then makes of the refusal.
            Err(e @ object_store::Error::AlreadyExists { .. }) => {
                self.owner.hand_over(location)?;
                Err(e)
            }
            Err(e) => {
                let _ = self.owner.hand_over_dirs(location);
                Err(e)
            }
        }
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        let inner = self.inner.put_multipart_opts(location, opts).await?;
        Ok(Box::new(OwnedUpload {
            inner,
            owner: self.owner.clone(),
            location: location.clone(),
        }))
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
        self.owner.hand_over(to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::local::LocalFileSystem;
    use object_store::ObjectStoreExt;

    #[tokio::test]
    async fn roots_puts_go_to_the_repository_owner() {
        if !nix::unistd::geteuid().is_root() {
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
        // A multipart upload too, once complete.
        let big = Path::from(format!("{}/basebackups/b/part", repo.display()));
        let mut up = store.put_multipart(&big).await.unwrap();
        up.put_part(PutPayload::from_static(b"part one"))
            .await
            .unwrap();
        up.complete().await.unwrap();
        for p in ["basebackups", "basebackups/b", "basebackups/b/part"] {
            let m = std::fs::metadata(repo.join(p)).unwrap();
            assert_eq!((m.uid(), m.gid()), (65534, 65534), "{p}");
        }
        // Never above the repository.
        assert_eq!(std::fs::metadata(t.path()).unwrap().uid(), 0);
    }

    #[tokio::test]
    async fn an_object_already_stored_is_handed_over_too() {
        if !nix::unistd::geteuid().is_root() {
            return; // only root can hand files over
        }
        let t = tempfile::tempdir().unwrap();
        let repo = t.path().join("repo");
        std::fs::create_dir(&repo).unwrap();
        std::os::unix::fs::chown(&repo, Some(65534), Some(65534)).unwrap();
        // Stored by root earlier and never handed over (a crash before the chown).
        let key = Path::from(format!("{}/wal/a/object", repo.display()));
        let plain: Arc<dyn ObjectStore> = Arc::new(LocalFileSystem::new());
        plain
            .put(&key, PutPayload::from_static(b"x"))
            .await
            .unwrap();
        assert_eq!(
            std::fs::metadata(repo.join("wal/a/object")).unwrap().uid(),
            0
        );
        // Pushed again: the create-only put is refused, and the object is the owner's now.
        let store = OwnedBy::new(plain, repo.clone(), 65534, 65534);
        let opts = PutOptions {
            mode: object_store::PutMode::Create,
            ..Default::default()
        };
        let e = store
            .put_opts(&key, PutPayload::from_static(b"x"), opts)
            .await
            .unwrap_err();
        assert!(
            matches!(e, object_store::Error::AlreadyExists { .. }),
            "{e}"
        );
        for p in ["wal", "wal/a", "wal/a/object"] {
            let m = std::fs::metadata(repo.join(p)).unwrap();
            assert_eq!((m.uid(), m.gid()), (65534, 65534), "{p}");
        }
    }
}

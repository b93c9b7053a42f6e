//! A store that can only be read: the legacy archive's.
//!
//! walarchive never writes to or deletes from a wal-e or wal-g archive (the operator's old
//! restore window, and possibly still another tool's live archive). Rather than rely on every
//! caller's discipline, the legacy source holds its store only through [`ReadOnly`], which has
//! no method that writes, copies or deletes: such a call does not compile.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{ListResult, ObjectMeta, ObjectStore, ObjectStoreExt};

/// Read access to an object store, and nothing else.
#[derive(Clone)]
pub struct ReadOnly(Arc<dyn ObjectStore>);

impl std::fmt::Debug for ReadOnly {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ReadOnly")
            .field(&self.0.to_string())
            .finish()
    }
}

impl ReadOnly {
    /// Wraps `store`; the wrapper is the only handle the legacy source keeps.
    pub fn new(store: Arc<dyn ObjectStore>) -> Self {
        ReadOnly(store)
    }

    /// The whole object at `key`.
    pub async fn get(&self, key: &Path) -> object_store::Result<Bytes> {
        self.0.get(key).await?.bytes().await
    }

    /// The bytes `range` of the object at `key`.
    pub async fn get_range(&self, key: &Path, range: Range<u64>) -> object_store::Result<Bytes> {
        self.0.get_range(key, range).await
    }

    /// The metadata of the object at `key`.
    pub async fn head(&self, key: &Path) -> object_store::Result<ObjectMeta> {
        self.0.head(key).await
    }

    /// Every object under `prefix`.
    pub fn list(
        &self,
        prefix: Option<&Path>,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.0.list(prefix)
    }

    /// The objects and "directories" immediately under `prefix`.
    pub async fn list_with_delimiter(
        &self,
        prefix: Option<&Path>,
    ) -> object_store::Result<ListResult> {
        self.0.list_with_delimiter(prefix).await
    }
}
